"""The pruning methods as pure functions: exact sparsity at each method's granularity, valid N:M
groups, equality with brute-force computations of each formula, and the numerical edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from backend.errors import UserError
from backend.pruning import spec as spec_module
from backend.pruning.methods.magnitude import magnitude_mask
from backend.pruning.methods.mi_neurons import mi_neurons_to_remove, mi_removal_order
from backend.pruning.methods.ria import (
    heuristic_channel_reallocation,
    nm_kept_score,
    ria_mask,
    ria_metric,
)
from backend.pruning.methods.sparsegpt import (
    INVERSE_FACTOR_LEAF,
    HessianNotPositiveDefiniteError,
    _inverse_hessian_factor,
    sparsegpt_prune,
    sparsegpt_prune_together,
)
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.registry import LayerToPrune, get_method
from backend.pruning.spec import (
    SAMPLED_SELECTION_MIN,
    SparsitySpec,
    kth_smallest,
    lowest_in_matrix,
    lowest_per_group,
    lowest_per_row,
    zero_where,
)
from backend.pruning.stats import InputStatistics, gram_block

NM_SPECS = [SparsitySpec.nm(2, 4), SparsitySpec.nm(4, 8)]


def random_layer(rows=24, columns=48, tokens=300, seed=0, correlated=True):
    """A weight [rows, columns] and calibration inputs [tokens, columns], unequal channel scales."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    inputs = 0.3 * torch.randn(tokens, columns, generator=generator)
    if correlated:  # like LLM activations: most of the variance in a few shared directions
        inputs += torch.randn(tokens, 8, generator=generator) @ torch.randn(
            8, columns, generator=generator
        )
    inputs = inputs * torch.linspace(0.2, 3.0, columns)
    return weight, inputs


def statistics_of(inputs, **kind) -> InputStatistics:
    stats = InputStatistics(inputs.shape[1], "cpu", **kind)
    stats.update(inputs)
    return stats


def assert_valid_nm(mask, n, m):
    rows, columns = mask.shape
    per_group = mask.reshape(rows, columns // m, m).sum(dim=2)
    assert torch.equal(per_group, torch.full_like(per_group, m - n)), (
        "every group must prune exactly m - n"
    )


# --------------------------------------------------------------------------- SparsitySpec


@pytest.mark.parametrize(
    "text, kind, target",
    [
        ("0.5", "unstructured", 0.5),
        ("0.3", "unstructured", 0.3),
        ("0.123456789", "unstructured", 0.123456789),
        ("2:4", "nm", 0.5),
        ("4:8", "nm", 0.5),
        ("1:4", "nm", 0.75),
        ("3:4", "nm", 0.25),
        ("neurons:0.2", "neurons", 0.2),
    ],
)
def test_spec_parse_label_round_trip(text, kind, target):
    spec = SparsitySpec.parse(text)
    assert spec.kind == kind
    assert spec.label == text
    assert SparsitySpec.parse(spec.label) == spec
    assert spec.target_sparsity == pytest.approx(target)


def test_spec_nm_counts_kept_weights():
    spec = SparsitySpec.parse(" 1:4 ")
    assert (spec.n, spec.m, spec.ratio) == (1, 4, 0.0)
    assert spec == SparsitySpec.nm(1, 4)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "0",
        "1",
        "1.0",
        "1.5",
        "-0.1",
        "nan",
        "inf",
        "2:4:8",
        "4:2",
        "4:4",
        "0:4",
        "-1:4",
        "a:b",
        "2.5:4",
        "2:",
        ":4",
        "neurons:",
        "neurons:x",
        "neurons:1.0",
        "neurons:0",
        "neurons:-0.2",
    ],
)
def test_spec_rejects_bad_text(text):
    with pytest.raises(UserError) as caught:
        SparsitySpec.parse(text)
    assert "\n" not in str(caught.value) and str(caught.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: SparsitySpec.unstructured(0.0),
        lambda: SparsitySpec.unstructured("0.5"),
        lambda: SparsitySpec.unstructured(True),
        lambda: SparsitySpec.nm(0, 4),
        lambda: SparsitySpec.nm(4, 4),
        lambda: SparsitySpec.nm(2.0, 4),
        lambda: SparsitySpec.neurons(1.0),
        lambda: SparsitySpec("blocks", 0.5),
        lambda: SparsitySpec("nm", ratio=0.5, n=2, m=4),
        lambda: SparsitySpec("unstructured", 0.5, n=2, m=4),
    ],
)
def test_spec_rejects_bad_construction(build):
    with pytest.raises(UserError):
        build()


def test_weight_methods_reject_neuron_spec():
    weight, inputs = random_layer(4, 8, 10)
    norms = inputs.norm(dim=0)
    for call in (
        lambda s: magnitude_mask(weight, s),
        lambda s: wanda_mask(weight, norms, s),
        lambda s: ria_mask(weight, norms, s),
        lambda s: sparsegpt_prune(weight, torch.eye(8), s),
    ):
        with pytest.raises(UserError):
            call(SparsitySpec.neurons(0.2))


def test_nm_needs_divisible_inputs():
    weight = torch.randn(4, 10)
    with pytest.raises(UserError, match="divisible"):
        magnitude_mask(weight, SparsitySpec.nm(2, 4))
    with pytest.raises(UserError, match="only applies to N:M"):
        ria_mask(weight, torch.ones(10), SparsitySpec.unstructured(0.5), channel_permutation=True)


def test_selection_with_ties_equals_a_stable_sort():
    generator = torch.Generator().manual_seed(12)
    metric = torch.randint(0, 4, (9, 24), generator=generator).float()  # many ties
    metric[3] = 0.0  # a row of one repeated value
    for count in (0, 1, 7, 12, 24):
        expected = torch.zeros_like(metric, dtype=torch.bool)
        expected.scatter_(1, torch.sort(metric, dim=1, stable=True).indices[:, :count], True)
        assert torch.equal(lowest_per_row(metric, count), expected)
    flat_order = torch.sort(metric.flatten(), stable=True).indices
    for count in (1, 50, 108, 215):
        expected = torch.zeros(metric.numel(), dtype=torch.bool)
        expected[flat_order[:count]] = True
        assert torch.equal(lowest_in_matrix(metric, count), expected.view_as(metric))
    groups = lowest_per_group(metric, 2, 4)
    assert_valid_nm(groups, 2, 4)
    assert torch.equal(
        groups[3], torch.tensor([True, True, False, False] * 6)
    )  # ties: leftmost first


@pytest.mark.parametrize(
    "values",
    [
        torch.rand(SAMPLED_SELECTION_MIN, generator=torch.Generator().manual_seed(1)).pow(4),
        torch.randint(
            0, 5, (3 * SAMPLED_SELECTION_MIN,), generator=torch.Generator().manual_seed(2)
        ).float(),
        torch.full((SAMPLED_SELECTION_MIN + 7,), 0.25),
        torch.arange(2 * SAMPLED_SELECTION_MIN, 0, -1).float(),  # sorted descending
        torch.randn(100_003, generator=torch.Generator().manual_seed(3)).exp(),  # heavy tail
    ],
    ids=["skewed", "five-values", "constant", "descending", "lognormal"],
)
def test_sampled_selection_equals_kthvalue(values):
    size = values.numel()
    for k in (1, 2, 37, size // 10, size // 2, size - 5, size):
        assert torch.equal(kth_smallest(values, k), torch.kthvalue(values, k).values), k


def test_sampled_selection_takes_kthvalue_only_inside_the_bracket(monkeypatch):
    values = torch.randn(100_003, generator=torch.Generator().manual_seed(3)).exp()
    sizes = []
    real = torch.kthvalue

    def recording(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch, "kthvalue", recording)
    expected = real(values, 50_000).values
    assert torch.equal(kth_smallest(values, 50_000), expected)
    assert sizes and max(sizes) < values.numel() // 10  # the sample and the few inside the bracket


def test_sampled_selection_recovers_when_the_sample_misleads(monkeypatch):
    values = torch.rand(SAMPLED_SELECTION_MIN * 2, generator=torch.Generator().manual_seed(4))
    ordered = torch.sort(values).values
    wrong_brackets = [
        (ordered[10], ordered[20]),  # entirely below the answer
        (ordered[-20], ordered[-10]),  # entirely above it
        (None, ordered[5]),
        (ordered[-5], None),
    ]
    for bracket in wrong_brackets:
        monkeypatch.setattr(spec_module, "_sample_bracket", lambda _values, _k, b=bracket: b)
        assert torch.equal(
            kth_smallest(values, values.numel() // 2), ordered[values.numel() // 2 - 1]
        )


def test_long_row_selection_with_ties_equals_a_stable_sort():
    generator = torch.Generator().manual_seed(5)
    metric = torch.randint(
        0, 50, (128, 600), generator=generator
    ).float()  # a SparseGPT-sized block
    flat_order = torch.sort(metric.flatten(), stable=True).indices
    for count in (1, 999, metric.numel() // 2, metric.numel() - 1):
        expected = torch.zeros(metric.numel(), dtype=torch.bool)
        expected[flat_order[:count]] = True
        assert torch.equal(lowest_in_matrix(metric, count), expected.view_as(metric)), count


# --------------------------------------------------------------------------- InputStatistics


def test_input_statistics_equal_direct_computation():
    generator = torch.Generator().manual_seed(1)
    batches = [
        torch.randn(2, 5, 6, generator=generator) + 3.0,
        torch.randn(7, 6, generator=generator) * 2 - 1,
        torch.randn(1, 3, 4, 6, generator=generator) + 10.0,
    ]
    stats = InputStatistics(6, "cpu", hessian=True, covariance=True)
    for batch in batches:
        stats.update(batch)
    direct = torch.cat([b.reshape(-1, 6) for b in batches]).double()  # [tokens, in]
    tokens = direct.shape[0]
    assert stats.tokens == tokens == 29
    torch.testing.assert_close(
        stats.act_norm.double(), direct.pow(2).sum(0).sqrt(), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        stats.hessian.double(), 2 * direct.T @ direct / tokens, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(stats.mean.double(), direct.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        stats.covariance.double(), torch.cov(direct.T, correction=0), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("columns", [2 * 128 + 50, 2 * 256 + 300])  # narrow and wide blocks
def test_blocked_hessian_equals_the_full_product(columns):
    # wide enough for the upper-block accumulation (the lower blocks are mirrored when read)
    block = gram_block(columns)
    assert columns > 2 * block
    generator = torch.Generator().manual_seed(6)
    batches = [torch.randn(40, columns, generator=generator) + shift for shift in (0.0, 2.0, -1.0)]
    stats = InputStatistics(columns, "cpu", hessian=True)
    for batch in batches[:2]:
        stats.update(batch)
    direct = torch.cat(batches[:2]).double()
    torch.testing.assert_close(
        stats.hessian.double(), 2 * direct.T @ direct / 80, rtol=1e-5, atol=1e-5
    )
    stats.update(batches[2])  # read, then updated again: the mirror must follow
    direct = torch.cat(batches).double()
    hessian = stats.hessian
    torch.testing.assert_close(hessian.double(), 2 * direct.T @ direct / 120, rtol=1e-5, atol=1e-5)
    # the blocks below the diagonal blocks are exact mirrors of those above
    block_of = torch.arange(columns) // block
    below = block_of[:, None] > block_of[None, :]
    assert torch.equal(hessian[below], hessian.T[below])


def test_input_statistics_only_what_was_asked_and_checks_width():
    stats = InputStatistics(3, "cpu")
    stats.update(torch.ones(2, 3, dtype=torch.bfloat16))
    assert stats.act_norm.dtype == torch.float32
    torch.testing.assert_close(stats.act_norm, torch.full((3,), math.sqrt(2)))
    with pytest.raises(RuntimeError):
        stats.hessian  # noqa: B018
    with pytest.raises(RuntimeError):
        stats.covariance  # noqa: B018
    with pytest.raises(ValueError):
        stats.update(torch.ones(2, 4))


# --------------------------------------------------------------------------- magnitude


@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.5, 0.9])
def test_magnitude_exact_count_per_matrix_and_threshold(ratio):
    weight, _ = random_layer(24, 40)
    mask = magnitude_mask(weight, SparsitySpec.unstructured(ratio))
    assert int(mask.sum()) == math.floor(ratio * weight.numel() + 0.5)
    assert weight.abs()[mask].max() <= weight.abs()[~mask].min()  # one threshold over the matrix
    # not per row: row counts differ for a random matrix
    assert len(set(mask.sum(1).tolist())) > 1


@pytest.mark.parametrize("spec", NM_SPECS, ids=lambda s: s.label)
def test_magnitude_nm_prunes_smallest_of_each_group(spec):
    weight, _ = random_layer(12, 32)
    mask = magnitude_mask(weight, spec)
    assert_valid_nm(mask, spec.n, spec.m)
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], spec.m):
            values = weight[row, start : start + spec.m].abs().tolist()
            smallest = sorted(range(spec.m), key=lambda k: values[k])[: spec.m - spec.n]
            assert sorted(mask[row, start : start + spec.m].nonzero().flatten().tolist()) == sorted(
                smallest
            )


# --------------------------------------------------------------------------- Wanda


def brute_force_wanda(weight, norms, spec):
    rows, columns = weight.shape
    mask = torch.zeros(rows, columns, dtype=torch.bool)
    for r in range(rows):
        scores = [abs(float(weight[r, j])) * float(norms[j]) for j in range(columns)]
        if spec.kind == "nm":
            for start in range(0, columns, spec.m):
                group = sorted(range(start, start + spec.m), key=lambda j: scores[j])
                for j in group[: spec.m - spec.n]:
                    mask[r, j] = True
        else:
            for j in sorted(range(columns), key=lambda j: scores[j])[
                : int(columns * spec.ratio + 1e-9)
            ]:
                mask[r, j] = True
    return mask


@pytest.mark.parametrize(
    "spec",
    [SparsitySpec.unstructured(0.5), SparsitySpec.unstructured(0.3), *NM_SPECS],
    ids=lambda s: s.label,
)
def test_wanda_equals_brute_force_and_exact_per_row(spec):
    weight, inputs = random_layer(10, 16, seed=2)
    norms = statistics_of(inputs).act_norm
    mask = wanda_mask(weight, norms, spec)
    assert torch.equal(mask, brute_force_wanda(weight, norms, spec))
    if spec.kind == "nm":
        assert_valid_nm(mask, spec.n, spec.m)
    else:
        assert mask.sum(1).tolist() == [int(16 * spec.ratio + 1e-9)] * 10
    # the activations matter: a magnitude-only mask differs on these unequal channel scales
    assert not torch.equal(mask, brute_force_wanda(weight, torch.ones(16), spec))


def test_wanda_per_row_count_survives_float_error():
    # 0.29 * 100 is 28.999999999999996 in floating point
    mask = wanda_mask(torch.randn(3, 100), torch.ones(100), SparsitySpec.unstructured(0.29))
    assert mask.sum(1).tolist() == [29, 29, 29]


# --------------------------------------------------------------------------- RIA


def brute_force_ria_metric(weight, norms, alpha):
    rows, columns = weight.shape
    metric = torch.zeros(rows, columns, dtype=torch.float64)
    for i in range(rows):
        for j in range(columns):
            channel_sum = sum(abs(float(weight[k, j])) for k in range(rows))
            row_sum = sum(abs(float(weight[i, k])) for k in range(columns))
            w = abs(float(weight[i, j]))
            metric[i, j] = (w / channel_sum + w / row_sum) * float(norms[j]) ** alpha
    return metric


@pytest.mark.parametrize(
    "spec",
    [SparsitySpec.unstructured(0.5), SparsitySpec.unstructured(0.37), *NM_SPECS],
    ids=lambda s: s.label,
)
def test_ria_equals_brute_force(spec):
    weight, inputs = random_layer(8, 16, seed=3)
    norms = statistics_of(inputs).act_norm
    metric = brute_force_ria_metric(weight, norms, 0.5)
    torch.testing.assert_close(ria_metric(weight, norms).double(), metric, rtol=1e-5, atol=0)
    mask, permutation = ria_mask(weight, norms, spec)
    assert permutation is None
    expected = torch.zeros_like(mask)
    if spec.kind == "nm":
        for r in range(8):
            for start in range(0, 16, spec.m):
                for j in sorted(range(start, start + spec.m), key=lambda j: float(metric[r, j]))[
                    : spec.m - spec.n
                ]:
                    expected[r, j] = True
        assert_valid_nm(mask, spec.n, spec.m)
    else:  # RIA compares over the whole matrix (the paper's default), not per row
        count = math.floor(spec.ratio * 128 + 0.5)
        flat = sorted(range(128), key=lambda k: float(metric.flatten()[k]))[:count]
        expected.view(-1)[flat] = True
        assert int(mask.sum()) == count
    assert torch.equal(mask, expected)


def test_ria_per_output_option_and_alpha():
    weight, inputs = random_layer(8, 20, seed=4)
    norms = statistics_of(inputs).act_norm
    mask, _ = ria_mask(weight, norms, SparsitySpec.unstructured(0.5), per_output=True)
    assert mask.sum(1).tolist() == [10] * 8
    # alpha = 0 drops the activations: the score is the relative importance alone
    torch.testing.assert_close(
        ria_metric(weight, norms, alpha=0.0), ria_metric(weight, torch.ones(20), alpha=0.5)
    )


def test_ria_zero_rows_and_channels_give_no_nan():
    weight = torch.randn(6, 8)
    weight[2] = 0
    weight[:, 5] = 0
    metric = ria_metric(weight, torch.ones(8))
    assert (
        torch.isfinite(metric).all()
        and metric[2].abs().sum() == 0
        and metric[:, 5].abs().sum() == 0
    )


@pytest.mark.parametrize("spec", NM_SPECS, ids=lambda s: s.label)
def test_ria_channel_permutation_is_valid_and_improves(spec):
    weight, inputs = random_layer(16, 64, seed=5)
    norms = statistics_of(inputs).act_norm
    metric = ria_metric(weight, norms)
    mask, permutation = ria_mask(weight, norms, spec, channel_permutation=True, lsa_block_groups=4)
    assert torch.equal(torch.sort(permutation).values, torch.arange(64))
    assert_valid_nm(mask[:, permutation], spec.n, spec.m)
    assert int(mask.sum()) == 16 * 64 * (spec.m - spec.n) // spec.m
    # the mask is the N:M choice on the permuted metric, mapped back to the original order
    permuted_mask = torch.zeros_like(mask)
    for r in range(16):
        for start in range(0, 64, spec.m):
            group = permutation[start : start + spec.m].tolist()
            for j in sorted(group, key=lambda j: float(metric[r, j]))[: spec.m - spec.n]:
                permuted_mask[r, j] = True
    assert torch.equal(mask, permuted_mask)
    # kept score: the assignment refinement never loses what the heuristic found
    heuristic = heuristic_channel_reallocation(metric, spec.m)
    _, heuristic_only = ria_mask(
        weight, norms, spec, channel_permutation=True, lsa_refinement=False
    )
    assert torch.equal(heuristic_only, heuristic)
    assert (
        nm_kept_score(metric, permutation, spec.n, spec.m)
        >= nm_kept_score(metric, heuristic, spec.n, spec.m) - 1e-6
    )
    assert nm_kept_score(metric, permutation, spec.n, spec.m) > nm_kept_score(
        metric, None, spec.n, spec.m
    )


def test_ria_heuristic_deals_one_channel_per_importance_band():
    metric = torch.rand(5, 16)
    permutation = heuristic_channel_reallocation(metric, 4)
    rank = torch.empty(16, dtype=torch.long)
    rank[torch.sort(metric.sum(0), stable=True).indices] = torch.arange(16)
    bands = (rank[permutation] // 4).view(4, 4)  # [groups, slots]: band of each channel
    assert torch.equal(bands, torch.arange(4).expand(4, 4))
    # snake order: group 0 gets the least important of band 0 and the most important of band 1
    assert rank[permutation].view(4, 4)[0].tolist() == [0, 7, 8, 15]


# --------------------------------------------------------------------------- SparseGPT


def brute_force_sparsegpt(weight, hessian, spec, blocksize, percdamp=0.01):
    """SparseGPT written from the paper with explicit sub-Hessian inverses and immediate updates."""
    w = weight.double().clone()
    h = hessian.double().clone()
    rows, columns = w.shape
    h += percdamp * torch.diagonal(h).mean() * torch.eye(columns, dtype=torch.float64)
    # OBS over the columns not yet processed: the inverse of H restricted to columns j..end
    inverses = [torch.linalg.inv(h[j:, j:]) for j in range(columns)]
    diag = [float(inverse[0, 0]) for inverse in inverses]  # [H_F^-1]_qq of each column q
    mask = torch.zeros(rows, columns, dtype=torch.bool)
    for j in range(columns):
        if j % blocksize == 0 and spec.kind == "unstructured":
            end = min(j + blocksize, columns)
            saliency = [
                (float(w[r, k]) ** 2 / diag[k], r, k) for r in range(rows) for k in range(j, end)
            ]  # OBS saliency w_q^2 / [H_F^-1]_qq, ties by (row, column) position
            quota = math.floor(spec.ratio * rows * end + 0.5) - math.floor(
                spec.ratio * rows * j + 0.5
            )
            for _, r, k in sorted(saliency)[:quota]:
                mask[r, k] = True
        if spec.kind == "nm" and j % spec.m == 0:
            for r in range(rows):
                saliency = [(float(w[r, k]) ** 2 / diag[k], k) for k in range(j, j + spec.m)]
                for _, k in sorted(saliency)[: spec.m - spec.n]:
                    mask[r, k] = True
        pruned_rows = mask[:, j]
        w[pruned_rows, j:] -= (w[pruned_rows, j] / diag[j]).unsqueeze(1) * inverses[j][0].unsqueeze(
            0
        )
        w[pruned_rows, j] = 0.0
    return w, mask


@pytest.mark.parametrize(
    "spec, blocksize",
    [
        (SparsitySpec.unstructured(0.5), 40),
        (SparsitySpec.unstructured(0.37), 16),
        (SparsitySpec.nm(2, 4), 8),
        (SparsitySpec.nm(4, 8), 16),
    ],
    ids=["0.5-one-block", "0.37-blocks", "2:4", "4:8"],
)
def test_sparsegpt_equals_brute_force_obs(spec, blocksize):
    _check_sparsegpt_against_brute_force(spec, blocksize, columns=40)


@pytest.mark.parametrize(
    "spec, blocksize, sub_block",
    [
        (SparsitySpec.unstructured(0.5), 40, 5),  # sub-blocks of 5 in blocks of 40
        (SparsitySpec.nm(2, 4), 40, 16),  # 16-column sub-blocks, and a short last one
        (SparsitySpec.nm(4, 8), 40, 16),
        (SparsitySpec.nm(3, 6), 36, 16),  # m does not divide 16: sub-blocks of 12
        (SparsitySpec.nm(2, 4), 12, 5),  # a sub-block rounded up to whole groups of m
    ],
    ids=["0.5-sub5", "2:4-sub16", "4:8-sub16", "3:6-sub12", "2:4-sub5"],
)
def test_sparsegpt_sub_blocks_equal_brute_force_obs(spec, blocksize, sub_block, monkeypatch):
    from backend.pruning.methods import sparsegpt as sparsegpt_module

    monkeypatch.setattr(sparsegpt_module, "SUB_BLOCK", sub_block)
    _check_sparsegpt_against_brute_force(spec, blocksize, columns=72 if spec.m == 6 else 40)


def _check_sparsegpt_against_brute_force(spec, blocksize, columns):
    weight, inputs = random_layer(6, columns, tokens=200, seed=6)
    hessian = statistics_of(inputs, hessian=True).hessian
    result = sparsegpt_prune(weight, hessian, spec, blocksize=blocksize)
    expected_weight, expected_mask = brute_force_sparsegpt(weight, hessian, spec, blocksize)
    assert torch.equal(result.mask, expected_mask)
    torch.testing.assert_close(result.weight.double(), expected_weight, rtol=2e-3, atol=2e-3)
    assert torch.all(result.weight[result.mask] == 0)
    if spec.kind == "nm":
        assert_valid_nm(result.mask, spec.n, spec.m)
    else:  # exact per matrix, and each block within one weight of its share
        assert int(result.mask.sum()) == math.floor(spec.ratio * weight.numel() + 0.5)
        for start in range(0, columns, blocksize):
            share = spec.ratio * 6 * min(blocksize, columns - start)
            assert abs(int(result.mask[:, start : start + blocksize].sum()) - share) <= 1
    assert result.retries == 0 and result.damp == pytest.approx(
        0.01 * float(torch.diagonal(hessian).mean())
    )


@pytest.mark.parametrize(
    "spec", [SparsitySpec.unstructured(0.45), *NM_SPECS], ids=lambda s: s.label
)
def test_sparsegpt_together_equals_one_by_one(spec):
    # q/k/v or gate/up: linears reading one input share the factorisation and the column loop
    _, inputs = random_layer(4, 64, tokens=400, seed=10)
    hessian = statistics_of(inputs, hessian=True).hessian
    generator = torch.Generator().manual_seed(11)
    weights = [torch.randn(rows, 64, generator=generator) for rows in (16, 5, 9)]
    together = sparsegpt_prune_together(weights, hessian, spec, blocksize=32)
    for weight, result in zip(weights, together, strict=True):
        alone = sparsegpt_prune(weight, hessian, spec, blocksize=32)
        assert torch.equal(result.mask, alone.mask)
        torch.testing.assert_close(result.weight, alone.weight, rtol=1e-5, atol=1e-6)
        if spec.kind == "unstructured":  # the quota is per linear, not shared
            assert int(result.mask.sum()) == math.floor(spec.ratio * weight.numel() + 0.5)
    with pytest.raises(ValueError, match="must all be"):
        sparsegpt_prune_together([weights[0], torch.randn(3, 32)], hessian, spec)


def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_inverse():
    size = 2 * INVERSE_FACTOR_LEAF + 90  # two levels of halves above the LAPACK leaves, odd sizes
    _, inputs = random_layer(4, size, tokens=3 * size, seed=12)
    hessian = statistics_of(inputs, hessian=True).hessian.double()
    hessian = (hessian + hessian.T) / 2  # float32 products leave it asymmetric in the last bits
    upper, damp, retries = _inverse_hessian_factor(hessian, 0.01)
    damped = hessian + damp * torch.eye(size, dtype=torch.float64)
    assert retries == 0 and torch.equal(upper, upper.triu()) and bool((upper.diagonal() > 0).all())
    torch.testing.assert_close(upper.T @ upper, torch.linalg.inv(damped), rtol=1e-8, atol=1e-10)
    reference = torch.linalg.cholesky(
        torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True
    )
    torch.testing.assert_close(upper, reference, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("spec", [SparsitySpec.unstructured(0.5), *NM_SPECS], ids=lambda s: s.label)
def test_sparsegpt_reconstructs_better_than_wanda(spec):
    weight, inputs = random_layer(32, 64, tokens=512, seed=7)
    stats = statistics_of(inputs, hessian=True)
    weight_before, hessian_before = weight.clone(), stats.hessian.clone()
    result = sparsegpt_prune(weight, stats.hessian, spec, blocksize=32)
    assert torch.equal(weight, weight_before) and torch.equal(
        stats.hessian, hessian_before
    )  # inputs untouched
    wanda_pruned = weight.masked_fill(wanda_mask(weight, stats.act_norm, spec), 0.0)
    dense_out = inputs @ weight.T
    sparsegpt_error = torch.linalg.norm(dense_out - inputs @ result.weight.T)
    wanda_error = torch.linalg.norm(dense_out - inputs @ wanda_pruned.T)
    assert sparsegpt_error < 0.8 * wanda_error


def test_methods_leave_a_transposed_view_untouched():
    # GPT-2's Conv1D weight reaches the methods as a transposed view of its [in, out] storage
    weight, inputs = random_layer(8, 16, tokens=100, seed=13)
    storage = weight.T.contiguous()  # [in, out]
    view = storage.T  # [out, in], shares storage
    stats = statistics_of(inputs, hessian=True)
    spec = SparsitySpec.unstructured(0.5)
    result = sparsegpt_prune(view, stats.hessian, spec, blocksize=8)
    magnitude_mask(view, spec)
    wanda_mask(view, stats.act_norm, spec)
    ria_mask(view, stats.act_norm, SparsitySpec.nm(2, 4), channel_permutation=True)
    assert torch.equal(storage, weight.T)
    assert torch.equal(result.mask, sparsegpt_prune(weight, stats.hessian, spec, blocksize=8).mask)


def test_sparsegpt_dead_input_channels():
    weight, inputs = random_layer(8, 16, tokens=100, seed=8)
    inputs[:, [2, 9]] = 0.0
    hessian = statistics_of(inputs, hessian=True).hessian
    result = sparsegpt_prune(weight, hessian, SparsitySpec.unstructured(0.5), blocksize=8)
    assert torch.isfinite(result.weight).all()
    assert torch.all(result.weight[:, [2, 9]] == 0) and torch.all(result.mask[:, [2, 9]])
    assert (
        int(result.mask.sum()) == 64
    )  # the dead weights fall within the quota (their saliency is 0)
    assert torch.all(result.weight[result.mask] == 0) and torch.all(
        result.weight[~result.mask] != 0
    )


@pytest.mark.parametrize("spec", [SparsitySpec.unstructured(0.5), SparsitySpec.nm(2, 4)],
                         ids=lambda s: s.label)
@pytest.mark.parametrize("scale", [1e-3, 3.0, 1e3])
def test_sparsegpt_ignores_the_hessian_scale(spec, scale):
    # Implementations normalise H differently (2XX^T/n here, XX^T elsewhere). With the dampening
    # a fraction of the mean diagonal, c*H has U/sqrt(c) as factor: saliencies all scale by c
    # (same mask) and each update U_cj * w / U_cc is unchanged (same weights).
    weight, inputs = random_layer(16, 64, tokens=300, seed=14)
    inputs[:, 5] = 0.0  # a dead input: detected by H_jj == 0 at any scale
    hessian = statistics_of(inputs, hessian=True).hessian
    reference = sparsegpt_prune(weight, hessian, spec, blocksize=32)
    scaled = sparsegpt_prune(weight, hessian * scale, spec, blocksize=32)
    assert torch.equal(scaled.mask, reference.mask)
    torch.testing.assert_close(scaled.weight, reference.weight, rtol=1e-4, atol=1e-5)
    assert scaled.damp == pytest.approx(reference.damp * scale, rel=1e-5)
    assert bool(reference.mask[:, 5].all())


def test_sparsegpt_retries_dampening_until_positive_definite():
    # diag 1, off-diagonal 1.5 on 8 inputs: eigenvalues 11.5 and -0.5 (x7). Dampening 0.01 and 0.1
    # leave it indefinite; the second retry's 1.0 makes it positive definite.
    hessian = torch.full((8, 8), 1.5).fill_diagonal_(1.0)
    result = sparsegpt_prune(
        torch.randn(4, 8), hessian, SparsitySpec.unstructured(0.5), blocksize=8
    )
    assert result.retries == 2
    assert result.damp == pytest.approx(1.0)
    assert int(result.mask.sum()) == 16


def test_inverse_factor_retries_when_only_a_schur_complement_is_indefinite():
    # [[I, B], [B^T, I]] with one coupling of 2.5: both diagonal halves are positive definite (the
    # recursion's first leaf succeeds), the Schur complement I - B B^T has -5.25 and H's smallest
    # eigenvalue is 1 - 2.5 = -1.5: dampening 0.01, 0.1 and 1.0 fail, 10 is the first that works.
    size = 2 * INVERSE_FACTOR_LEAF + 90
    half = size // 2
    hessian = torch.eye(size, dtype=torch.float64)
    hessian[0, half] = hessian[half, 0] = 2.5
    upper, damp, retries = _inverse_hessian_factor(hessian, 0.01)
    assert retries == 3 and damp == pytest.approx(10.0)
    torch.testing.assert_close(upper.T @ upper, torch.linalg.inv(hessian + damp * torch.eye(size, dtype=torch.float64)),
                               rtol=1e-10, atol=1e-12)


def test_sparsegpt_gives_up_with_a_clear_error():
    # eigenvalue 1 - 1e9: the largest dampening tried, 0.01 * 10^8 = 1e6, cannot fix it
    hessian = torch.tensor([[1.0, 1e9], [1e9, 1.0]])
    with pytest.raises(HessianNotPositiveDefiniteError) as caught:
        sparsegpt_prune(torch.randn(4, 2), hessian, SparsitySpec.unstructured(0.5))
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    assert "not positive definite" in str(caught.value) and "8 retries" in str(caught.value)
    for broken in (torch.full((2, 2), float("nan")), -torch.eye(2)):
        with pytest.raises(UserError, match="Hessian"):
            sparsegpt_prune(torch.randn(4, 2), broken, SparsitySpec.unstructured(0.5))
    with pytest.raises(UserError, match="multiple of m"):
        sparsegpt_prune(torch.randn(4, 8), torch.eye(8), SparsitySpec.nm(2, 4), blocksize=6)


# --------------------------------------------------------------------------- MI neurons


def neuron_activations(tokens=3000, neurons=8, seed=9):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, neurons, generator=generator) * torch.linspace(0.5, 2.0, neurons)


def covariance_and_mean(activations):
    stats = statistics_of(activations, covariance=True)
    return stats.covariance, stats.mean


def test_mi_removes_a_duplicated_neuron_first():
    activations = neuron_activations()
    activations[:, 3] = -2.5 * activations[:, 1]  # a scaled copy: all of neuron 1's information
    covariance, mean = covariance_and_mean(activations)
    order = mi_removal_order(covariance, mean, 2)
    assert int(order[0]) in (1, 3)
    assert int(order[1]) not in (
        1,
        3,
    )  # once one of the pair is gone, the other is no longer redundant


def test_mi_removes_dead_then_constant_neurons_first():
    activations = neuron_activations(neurons=10)
    activations[:, 6] = 0.0
    activations[:, 2] = 0.0
    activations[:, 0] = 3.0  # constant but not dead
    activations[:, 7] = activations[:, 4] * 0.5
    covariance, mean = covariance_and_mean(activations)
    order = mi_removal_order(covariance, mean, 4).tolist()
    assert order[:3] == [2, 6, 0]
    assert order[3] in (4, 7)
    assert mi_neurons_to_remove(covariance, mean, 0.2).tolist() == [2, 6]


@pytest.mark.parametrize("ratio, count", [(0.3, 3), (0.25, 3), (0.5, 5), (0.04, 0), (0.9, 9)])
def test_mi_exact_count_sorted_unique(ratio, count):
    covariance, mean = covariance_and_mean(neuron_activations(neurons=10) @ torch.randn(10, 10))
    removed = mi_neurons_to_remove(covariance, mean, ratio)
    assert removed.dtype == torch.long and removed.numel() == count
    assert removed.tolist() == sorted(set(removed.tolist()))


def test_mi_greedy_equals_brute_force():
    generator = torch.Generator().manual_seed(10)
    activations = torch.randn(2000, 7, generator=generator) @ torch.randn(7, 7, generator=generator)
    covariance, mean = covariance_and_mean(activations)
    cov = covariance.double()
    kept, expected = list(range(7)), []
    for _ in range(5):

        def redundancy(i):
            return max(
                -0.5 * math.log(1 - float(cov[i, j]) ** 2 / float(cov[i, i] * cov[j, j]))
                for j in kept
                if j != i
            )

        most = max(kept, key=redundancy)
        expected.append(most)
        kept.remove(most)
    assert mi_removal_order(covariance, mean, 5).tolist() == expected


# --------------------------------------------------------------------------- bfloat16


def test_bfloat16_weights_give_the_float32_masks():
    weight, inputs = random_layer(16, 32, seed=11)
    stats = statistics_of(inputs, hessian=True)
    low = weight.to(torch.bfloat16)
    same_values = low.float()
    for spec in (SparsitySpec.unstructured(0.5), SparsitySpec.nm(2, 4)):
        assert torch.equal(magnitude_mask(low, spec), magnitude_mask(same_values, spec))
        assert torch.equal(
            wanda_mask(low, stats.act_norm, spec), wanda_mask(same_values, stats.act_norm, spec)
        )
        assert torch.equal(
            ria_mask(low, stats.act_norm, spec)[0], ria_mask(same_values, stats.act_norm, spec)[0]
        )
        pruned_low = sparsegpt_prune(low, stats.hessian, spec, blocksize=16)
        pruned_float = sparsegpt_prune(same_values, stats.hessian, spec, blocksize=16)
        assert pruned_low.weight.dtype == torch.bfloat16
        assert torch.equal(pruned_low.mask, pruned_float.mask)
        assert torch.equal(pruned_low.weight, pruned_float.weight.to(torch.bfloat16))
    spec = SparsitySpec.nm(2, 4)
    low_mask, low_perm = ria_mask(low, stats.act_norm, spec, channel_permutation=True)
    float_mask, float_perm = ria_mask(same_values, stats.act_norm, spec, channel_permutation=True)
    assert torch.equal(low_mask, float_mask) and torch.equal(low_perm, float_perm)
    covariance, mean = covariance_and_mean(neuron_activations())
    assert torch.equal(
        mi_neurons_to_remove(covariance.to(torch.bfloat16), mean.to(torch.bfloat16), 0.5),
        mi_neurons_to_remove(
            covariance.to(torch.bfloat16).float(), mean.to(torch.bfloat16).float(), 0.5
        ),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_zero_where_is_masked_fill_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(37, 53, generator=generator).to(dtype)
    values[0, :4] = torch.tensor([float("nan"), -0.0, float("-inf"), -1.0]).to(dtype)
    mask = torch.rand(37, 53, generator=generator) < 0.5
    mask[0, :4] = True
    expected = values.masked_fill(mask, 0)
    assert torch.equal(zero_where(values.clone(), mask).view(torch.uint8), expected.view(torch.uint8))
    # a transposed view (GPT-2's Conv1D weight read as [out, in]) is zeroed in its own layout
    stored = values.T.contiguous()
    zero_where(stored.T, mask)
    assert torch.equal(stored.T.contiguous().view(torch.uint8), expected.view(torch.uint8))


def _layer_of_groups(nan_group: str | None = None) -> LayerToPrune:
    """q/k (one input), o, and a wider down projection: three groups of shared statistics."""
    shapes = {"q": (24, 40, "attn"), "k": (8, 40, "attn"), "o": (40, 40, "o"), "down": (40, 72, "down")}
    statistics = {}
    for group, columns in (("attn", 40), ("o", 40), ("down", 72)):
        _, inputs = random_layer(4, columns, tokens=200, seed=columns + len(group))
        if group == nan_group:
            inputs[3, 5] = float("nan")
        statistics[group] = statistics_of(inputs, hessian=True)
    linears, by_linear = {}, {}
    for seed, (name, (rows, columns, group)) in enumerate(shapes.items()):
        linear = torch.nn.Linear(columns, rows, bias=False)
        linear.weight.data = random_layer(rows, columns, seed=seed)[0]
        linears[name], by_linear[name] = linear, statistics[group]
    return LayerToPrune(0, linears, by_linear, adapter=None)  # type: ignore[arg-type]


def test_sparsegpt_groups_side_by_side_equal_one_after_another():
    layer = _layer_of_groups()
    assert layer.input_groups() == [["q", "k"], ["o"], ["down"]]
    method = get_method("sparsegpt")
    options, spec = method.parse_options({"blocksize": 16}), SparsitySpec.unstructured(0.5)
    threads = torch.get_num_threads()
    changes = method.prune(layer, options, spec)
    assert torch.get_num_threads() == threads  # restored after the groups ran on their share
    assert [change.linear for change in changes] == ["q", "k", "o", "down"]  # the layer's order
    by_name = {change.linear: change for change in changes}
    for group in layer.input_groups():
        alone = sparsegpt_prune_together([layer.weight(name) for name in group],
                                         layer.statistics[group[0]].hessian, spec, blocksize=16)
        for name, result in zip(group, alone, strict=True):
            assert torch.equal(by_name[name].mask, result.mask)
            torch.testing.assert_close(by_name[name].new_value, result.weight, rtol=1e-6, atol=1e-6)


def test_a_failing_group_still_restores_the_thread_count():
    threads = torch.get_num_threads()
    method = get_method("sparsegpt")
    with pytest.raises(UserError, match="inf or NaN"):
        method.prune(_layer_of_groups(nan_group="o"), method.parse_options({}), SparsitySpec.unstructured(0.5))
    assert torch.get_num_threads() == threads


def test_zero_where_refuses_a_mask_that_is_not_bool_like_masked_fill():
    with pytest.raises(RuntimeError, match="(?i)bool"):
        zero_where(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.uint8))
