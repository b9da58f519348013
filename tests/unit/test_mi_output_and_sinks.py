"""mi's victim rule and weigh_output ranking, and leaving attention-sink tokens out of the statistics."""

from __future__ import annotations

import json

import pytest
import torch

from backend.cli import main
from backend.pruning import neuron_math
from backend.pruning.config import PruneConfig, variant_identity
from backend.pruning.engine import capture_decoder_inputs, collect_statistics
from backend.pruning.methods.mi_neurons import (
    gaussian_mutual_information,
    mi_threshold_removal,
    output_energy,
    unexplained_output_removal,
)
from backend.pruning.spec import SparsitySpec
from backend.pruning.stats import InputStatistics
from backend.pruning.variants import list_variants
from tests.conftest import tiny_loaded


def _pair_case():
    """Neurons 0 and 1 are the one clearly redundant pair; 0 also shares some of neuron 2.

    So 0 has the larger total MI (the old rule removes it), but 0 writes a 10x larger down column
    (the less-output rule removes 1).
    """
    covariance = torch.tensor([[1.0, 0.95, 0.4, 0.0],
                               [0.95, 1.0, 0.3, 0.0],
                               [0.4, 0.3, 1.0, 0.0],
                               [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    assert bool((torch.linalg.eigvalsh(covariance) > 0).all())
    mean = torch.tensor([0.5, 0.1, 0.0, 0.2], dtype=torch.float64)
    weight = torch.ones(3, 4, dtype=torch.float64)
    weight[:, 0] = 10.0
    return covariance, mean, weight


def test_victim_rules_pick_different_members_of_the_redundant_pair():
    covariance, mean, weight = _pair_case()
    information = gaussian_mutual_information(covariance)
    assert float(information.sum(1)[0]) > float(information.sum(1)[1])  # 0 is the more redundant
    energy = output_energy(covariance, mean, weight)
    assert float(energy[0]) > float(energy[1])  # 0 carries more output
    assert mi_threshold_removal(covariance, mean, 1, victim="more-redundant").tolist() == [0]
    assert mi_threshold_removal(covariance, mean, 1, victim="less-output", output_energy=energy).tolist() == [1]
    with pytest.raises(ValueError, match="output_energy"):
        mi_threshold_removal(covariance, mean, 1, victim="less-output")
    with pytest.raises(ValueError, match="victim"):
        mi_threshold_removal(covariance, mean, 1, victim="larger", output_energy=energy)


def test_output_energy_is_mean_square_activation_times_column_norm():
    h = torch.randn(400, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3
    weight = torch.randn(7, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    covariance, mean = torch.cov(h.T, correction=0), h.mean(0)
    expected = [float((h[:, j] ** 2).mean() * (weight[:, j] ** 2).sum()) for j in range(5)]
    assert output_energy(covariance, mean, weight).tolist() == pytest.approx(expected, rel=1e-10)


def _correlated(tokens: int, neurons: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(neurons, neurons, generator=generator, dtype=torch.float64)
    mixing += 2.0 * torch.eye(neurons, dtype=torch.float64)
    shift = torch.randn(neurons, generator=generator, dtype=torch.float64)
    return torch.randn(tokens, neurons, generator=generator, dtype=torch.float64) @ mixing + shift


def test_weigh_output_order_equals_brute_force_formula():
    h = _correlated(600, 9, seed=3)
    weight = torch.randn(4, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    covariance, mean = torch.cov(h.T, correction=0), h.mean(0)
    kept, expected = list(range(9)), []
    for _ in range(6):  # remove argmin_j (1 - max_k ρ²_jk over kept k) · E[h_j²] · ‖W_j‖²
        def score(j):
            best = max(float(covariance[j, k]) ** 2 / float(covariance[j, j] * covariance[k, k])
                       for k in kept if k != j)
            return (1 - best) * float((h[:, j] ** 2).mean()) * float((weight[:, j] ** 2).sum())
        victim = min(kept, key=score)
        expected.append(victim)
        kept.remove(victim)
    assert unexplained_output_removal(covariance, mean, weight, 6).tolist() == expected


def _unexplained_output(h, second_moment, folded, kept, j) -> float:
    """(1 - R²_j) from a regression of neuron j on the other kept ones, times E[h_j²]·‖W_j‖²."""
    others = [k for k in kept if k != j]
    design = torch.cat([h[:, others], torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)
    fit = design @ torch.linalg.lstsq(design, h[:, j:j + 1]).solution
    unexplained = float(((h[:, j:j + 1] - fit) ** 2).sum() / ((h[:, j] - h[:, j].mean()) ** 2).sum())
    return unexplained * float(second_moment[j]) * float((folded[:, j] ** 2).sum())


def test_joint_weigh_output_greedy_equals_brute_force_formula():
    h = _correlated(800, 8, seed=5)
    weight = torch.randn(3, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    covariance = torch.cov(h.T, correction=0)
    second_moment = (h ** 2).mean(0)
    kept, removed = list(range(8)), []
    for _ in range(5):  # W is the down projection after the fold-in of the removals so far
        folded = neuron_math.fold_in(weight, covariance, torch.tensor(removed, dtype=torch.long))
        victim = min(kept, key=lambda j, w=folded: _unexplained_output(h, second_moment, w, kept, j))
        removed.append(victim)
        kept.remove(victim)
    order, _ = neuron_math.greedy_neuron_removal(weight, covariance, 5, damp=0.0,
                                                 criterion="unexplained-output", second_moment=second_moment)
    assert order.tolist() == removed


def test_skip_leading_statistics_equal_hand_computation_on_the_later_tokens():
    x = torch.randn(5, 12, 6, generator=torch.Generator().manual_seed(7))  # [windows, seq, in]
    for skip in (0, 1, 3):
        stats = InputStatistics(6, "cpu", covariance=True, skip_leading=skip)
        for batch in x.split(2):  # batches of windows, as the engine streams them
            stats.update(batch)
        kept = x[:, skip:].reshape(-1, 6).double()
        assert stats.tokens == 5 * (12 - skip)
        torch.testing.assert_close(stats.mean.double(), kept.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.covariance.double(), torch.cov(kept.T, correction=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats.act_norm.double(), kept.pow(2).sum(0).sqrt(), rtol=1e-5, atol=1e-6)
        hessian = InputStatistics(6, "cpu", hessian=True, skip_leading=skip)
        hessian.update(x)
        torch.testing.assert_close(hessian.hessian.double(), 2 * kept.T @ kept / kept.shape[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        InputStatistics(6, "cpu", skip_leading=-1)


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])  # OPT flattens the tokens inside its layer
def test_engine_statistics_skip_the_first_tokens_of_each_window(family):
    loaded = tiny_loaded(family)
    windows = torch.randint(5, 60, (3, 16), generator=torch.Generator().manual_seed(0))
    layers = loaded.adapter.decoder_layers(loaded.model)
    down_name = loaded.adapter.mlp_output
    with torch.no_grad():
        hidden, calls = capture_decoder_inputs(loaded.model, layers, [windows], torch.device("cpu"))
    down = layers[0].get_submodule(down_name)
    seen = []
    handle = down.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            loaded.model(input_ids=windows, use_cache=False)
    finally:
        handle.remove()
    neurons = seen[0].reshape(3, 16, -1)[:, 2:].reshape(-1, seen[0].shape[-1]).double()  # after 2 tokens
    stats = collect_statistics(layers[0], {down_name: down}, hidden, [calls[0][0]], torch.device("cpu"),
                               hessian=False, covariance_of=frozenset({down_name}), skip_leading=2)[down_name]
    assert stats.tokens == 3 * 14
    torch.testing.assert_close(stats.mean.double(), neurons.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.covariance.double(), torch.cov(neurons.T, correction=0), rtol=1e-3, atol=1e-5)


def test_new_options_are_part_of_the_variant_identity():
    base = {"method": "mi", "calibration": "lambada", "spec": SparsitySpec.neurons(0.2)}
    identities = [variant_identity("m", PruneConfig(**base, **options), 64)
                  for options in ({}, {"victim": "more-redundant"}, {"weigh_output": True}, {"sink_tokens": 1})]
    assert identities[0]["options"]["victim"] == "less-output"
    assert identities[0]["options"]["weigh_output"] is False and identities[0]["options"]["sink_tokens"] == 0
    assert len({json.dumps(identity, sort_keys=True) for identity in identities}) == 4
    flap = variant_identity("m", PruneConfig(method="flap", calibration="lambada", spec=SparsitySpec.neurons(0.2),
                                             sink_tokens=2), 64)
    assert flap["options"]["sink_tokens"] == 2


def test_cli_flags_reach_the_manifest(isolated_cache, tiny_model_dir, calibration_file, capsys):
    argv = ["prune", "--model", str(tiny_model_dir("llama")), "--method", "mi", "--neuron-ratio", "0.25",
            "--calibration", calibration_file, "--nsamples", "2", "--seqlen", "16", "--weigh-output",
            "--victim", "more-redundant", "--sink-tokens", "1", "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    options = manifest.get("options") or manifest["config"]["options"]
    assert options["weigh_output"] is True and options["victim"] == "more-redundant"
    assert options["sink_tokens"] == 1


@pytest.mark.parametrize("argv,needle", [
    (["--method", "mi", "--victim", "bigger"], "invalid choice"),
    (["--method", "mi", "--sink-tokens", "-1"], "sink_tokens"),
    (["--method", "flap", "--sink-tokens", "65"], "sink_tokens"),
    (["--method", "flap", "--weigh-output"], "weigh_output"),
    (["--method", "mi", "--sink-tokens", "16"], "sink_tokens"),  # nothing left of 16-token windows
])
def test_cli_bad_values_exit_2_with_one_line(isolated_cache, tiny_model_dir, calibration_file, capsys,
                                             argv, needle):
    assert main(["prune", "--model", str(tiny_model_dir("llama")), "--neuron-ratio", "0.25",
                 "--calibration", calibration_file, "--nsamples", "2", "--seqlen", "16", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and needle in errors[0], err
    assert "Traceback" not in "\n".join(err)
    assert list_variants() == []
