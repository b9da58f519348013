"""The math of structured neuron removal against brute force: Gram, fold-in closed form, exact
reconstruction of collinear neurons in a real LLaMA MLP, the structured-OBS error formula, greedy
OBS, FLAP's bias compensation, the joint Gaussian MI and the paper's pairwise threshold rule."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from backend.pruning import neuron_math
from backend.pruning.methods.mi_neurons import gaussian_mutual_information, mi_threshold_removal
from backend.pruning.stats import InputStatistics


def activations(tokens=400, neurons=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(neurons, neurons, generator=generator, dtype=torch.float64)
    return torch.randn(tokens, neurons, generator=generator, dtype=torch.float64) @ mixing + 0.3


def streamed(h, batches=3):
    stats = InputStatistics(h.shape[1], "cpu", covariance=True)
    for chunk in h.float().chunk(batches):
        stats.update(chunk)
    return stats


def test_gram_from_streamed_statistics_equals_sum_of_outer_products():
    h = activations()
    stats = streamed(h)
    gram = neuron_math.neuron_gram(stats.covariance, stats.mean, stats.tokens)
    assert torch.allclose(gram, h.T @ h, rtol=1e-4, atol=1e-2)


def test_fold_in_equals_the_closed_form():
    h = activations()
    gram = h.T @ h
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    removed = torch.tensor([2, 7, 9])
    kept = torch.tensor([i for i in range(12) if i not in (2, 7, 9)])
    damp = 0.05
    lam = damp * float(torch.diagonal(gram).mean())
    closed = torch.linalg.inv(gram[kept][:, kept] + lam * torch.eye(9, dtype=torch.float64)) @ gram[kept][:, removed]
    expected = weight.clone()
    expected[:, kept] += weight[:, removed] @ closed.T
    expected[:, removed] = 0
    result = neuron_math.fold_in(weight, gram, removed, damp)
    assert torch.allclose(result, expected, atol=1e-10)
    # and the fold-in is the least-squares optimum: the fitted residual is orthogonal to h_S
    coefficients = neuron_math.fold_in_coefficients(gram, removed, 0.0)
    residual = h[:, removed] - h[:, kept] @ coefficients
    assert (h[:, kept].T @ residual).abs().max() < 1e-6 * gram.abs().max()


def test_collinear_neurons_removed_and_folded_reproduce_a_llama_mlp():
    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=4, hidden_act="silu")).double()
    with torch.no_grad():  # neurons 5 and 11 copy neurons 1 and 3, scaled: h_5 = 2 h_1, h_11 = -0.5 h_3
        mlp.gate_proj.weight[5] = mlp.gate_proj.weight[1]
        mlp.up_proj.weight[5] = 2.0 * mlp.up_proj.weight[1]
        mlp.gate_proj.weight[11] = mlp.gate_proj.weight[3]
        mlp.up_proj.weight[11] = -0.5 * mlp.up_proj.weight[3]
    x = torch.randn(300, 16, dtype=torch.float64)
    captured = []
    handle = mlp.down_proj.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        dense = mlp(x)
    handle.remove()
    h = captured[0]  # [tokens, 24]
    removed = torch.tensor([5, 11])
    original_down = mlp.down_proj.weight.detach().clone()
    new_down = neuron_math.fold_in(original_down, h.T @ h, removed, damp=0.0)
    with torch.no_grad():
        mlp.down_proj.weight.copy_(new_down)
        mlp.gate_proj.weight[removed] = 0
        mlp.up_proj.weight[removed] = 0
        pruned = mlp(x)
        unseen = torch.randn(50, 16, dtype=torch.float64)  # collinearity holds on any input
        folded = torch.nn.functional.linear(
            mlp.act_fn(unseen @ mlp.gate_proj.weight.T) * (unseen @ mlp.up_proj.weight.T), new_down)
        assert (mlp(unseen) - folded).abs().max() < 1e-12
    assert (pruned - dense).abs().max() < 1e-5
    assert torch.all(mlp.down_proj.weight[:, removed] == 0)
    # without the fold-in the same removal changes the output a lot
    zeroed = original_down.clone()
    zeroed[:, removed] = 0
    assert (h @ zeroed.T - dense).abs().max() > 1e-2


def test_structured_obs_error_equals_measured_output_error():
    h = activations(tokens=500, neurons=10, seed=3)
    gram = h.T @ h
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for removed in (torch.tensor([4]), torch.tensor([0, 3, 8]), torch.tensor([1, 2, 5, 6, 9])):
        folded = neuron_math.fold_in(weight, gram, removed, damp=0.0)
        measured = float(((h @ weight.T - h @ folded.T) ** 2).sum())
        predicted = neuron_math.structured_obs_error(weight, gram, removed, damp=0.0)
        assert predicted == pytest.approx(measured, rel=1e-8)
        zeroed = weight.clone()
        zeroed[:, removed] = 0
        assert float(((h @ weight.T - h @ zeroed.T) ** 2).sum()) > measured  # fold-in helps


def test_greedy_obs_first_choice_is_the_best_single_neuron_and_its_weights_are_one_fold_in():
    h = activations(tokens=500, neurons=10, seed=5)
    gram = h.T @ h
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    errors = [neuron_math.structured_obs_error(weight, gram, torch.tensor([j]), damp=0.01) for j in range(10)]
    order, folded = neuron_math.greedy_neuron_removal(weight, gram, 4, damp=0.01)
    assert int(order[0]) == min(range(10), key=errors.__getitem__)
    assert len(set(order.tolist())) == 4
    assert torch.allclose(folded, neuron_math.fold_in(weight, gram, order, damp=0.01), atol=1e-9)
    # each greedy step is the best single addition to the set chosen so far
    for step in range(1, 4):
        chosen = order[:step].tolist()
        best = min((j for j in range(10) if j not in chosen),
                   key=lambda j: neuron_math.structured_obs_error(weight, gram, torch.tensor(chosen + [j]), 0.01))
        assert int(order[step]) == best


def test_flap_score_and_bias_compensation_keep_the_output_mean():
    h = activations(tokens=600, neurons=8, seed=7)
    stats = streamed(h, batches=2)
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    scores = neuron_math.flap_scores(torch.diagonal(stats.covariance), weight)
    expected = h.var(dim=0, unbiased=False) * (weight ** 2).sum(dim=0)
    assert torch.allclose(scores.double(), expected, rtol=1e-4)
    removed = torch.tensor([1, 6])
    zeroed = weight.clone()
    zeroed[:, removed] = 0
    bias = neuron_math.mean_bias(weight, stats.mean.double(), removed)
    assert torch.allclose((h @ zeroed.T + bias).mean(dim=0), (h @ weight.T).mean(dim=0), atol=1e-4)


def test_affine_fold_in_is_exact_for_affinely_dependent_neurons():
    h = activations(tokens=300, neurons=8, seed=9)
    h[:, 6] = 1.5 * h[:, 2] - 0.7 * h[:, 4] + 2.0  # affine in two kept neurons
    covariance = torch.cov(h.T, correction=0)
    weight = torch.randn(5, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    new_weight, increment = neuron_math.affine_fold_in(weight, covariance, h.mean(dim=0), torch.tensor([6]))
    assert (h @ new_weight.T + increment - h @ weight.T).abs().max() < 1e-8


def test_joint_gaussian_mi_matches_regression_r_squared():
    h = activations(tokens=2000, neurons=6, seed=11)
    covariance = torch.cov(h.T, correction=0)
    mi = neuron_math.joint_gaussian_mi(covariance, damp=0.0)
    for j in range(6):
        others = [i for i in range(6) if i != j]
        design = torch.cat([h[:, others], torch.ones(2000, 1, dtype=torch.float64)], dim=1)
        fit = design @ torch.linalg.lstsq(design, h[:, j:j + 1]).solution
        r2 = 1 - float(((h[:, j:j + 1] - fit) ** 2).sum() / ((h[:, j] - h[:, j].mean()) ** 2).sum())
        assert float(mi[j]) == pytest.approx(-0.5 * math.log(1 - r2), rel=1e-4)


def test_paper_threshold_rule_removes_one_of_each_redundant_pair_and_exact_count():
    generator = torch.Generator().manual_seed(12)
    h = torch.randn(3000, 10, generator=generator)
    h[:, 7] = 3.0 * h[:, 2] + 0.01 * torch.randn(3000, generator=generator)
    h[:, 9] = -h[:, 4] + 0.05 * torch.randn(3000, generator=generator)
    stats = streamed(h)
    information = gaussian_mutual_information(stats.covariance)
    assert float(information[2, 7]) > 3.0 and float(information[4, 9]) > 1.5
    first_two = mi_threshold_removal(stats.covariance, stats.mean, 2, victim="more-redundant", seed=0)
    assert {int(first_two[0]), int(first_two[1])} & {2, 7} and {int(first_two[0]), int(first_two[1])} & {4, 9}
    assert int(first_two[0]) in (2, 7)  # the most redundant pair is visited first (largest Tr)
    for count in (0, 3, 9):
        order = mi_threshold_removal(stats.covariance, stats.mean, count, victim="more-redundant", seed=3)
        assert order.numel() == count and len(set(order.tolist())) == count
    assert torch.equal(mi_threshold_removal(stats.covariance, stats.mean, 6, victim="more-redundant", seed=4),
                       mi_threshold_removal(stats.covariance, stats.mean, 6, victim="more-redundant", seed=4))
    # a fixed high threshold admits only the two redundant pairs in its first pass
    removed = mi_threshold_removal(stats.covariance, stats.mean, 2, victim="more-redundant", threshold=1.0)
    assert set(removed.tolist()) <= {2, 7, 4, 9}


@pytest.mark.parametrize("criterion", ["obs", "information"])
def test_blocked_greedy_folds_in_exactly_and_starts_with_the_best_block(criterion):
    h = activations(tokens=500, neurons=16, seed=13)
    gram = h.T @ h if criterion == "obs" else torch.cov(h.T, correction=0)
    weight = torch.randn(6, 16, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    order, folded = neuron_math.greedy_neuron_removal(weight, gram, 7, damp=0.01, criterion=criterion,
                                                      block=3)
    assert order.numel() == 7 and len(set(order.tolist())) == 7
    assert torch.allclose(folded, neuron_math.fold_in(weight, gram, order, damp=0.01), atol=1e-9)
    single, _ = neuron_math.greedy_neuron_removal(weight, gram, 1, damp=0.01, criterion=criterion)
    assert int(order[0]) == int(single[0])
    if criterion == "information":  # the first block: the three largest joint MI
        mi = neuron_math.joint_gaussian_mi(gram, damp=0.01)
        assert set(order[:3].tolist()) == set(torch.topk(mi, 3).indices.tolist())
