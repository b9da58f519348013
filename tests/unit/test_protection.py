"""Protected neurons: protected weights are kept, every linear still reaches exactly its sparsity,
N:M groups stay valid, an empty protection changes nothing, upweight multiplies the saliency."""

from __future__ import annotations

import pytest
import torch

from backend.errors import UserError
from backend.pruning.engine import PruneConfig, create_variant, variant_id
from backend.pruning.methods.magnitude import magnitude_mask
from backend.pruning.methods.ria import ria_mask
from backend.pruning.methods.sparsegpt import sparsegpt_prune
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.protection import Protection, WeightGuard, guarded_mask_for_spec
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_masks
from tests.conftest import tiny_loaded

OUT, IN = 24, 32


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(OUT, IN, generator=generator)
    tokens = torch.randn(IN, 200, generator=generator)
    hessian = 2 * tokens @ tokens.T / tokens.shape[1]
    act_norm = tokens.norm(dim=1)
    return weight, act_norm, hessian


def _guard(kind: str, mode: str = "keep", factor: float = 10.0) -> WeightGuard:
    protected = torch.zeros(OUT, IN, dtype=torch.bool)
    if kind == "rows":  # gate/up of protected neurons: whole rows
        protected[[0, 5, 6, 17]] = True
    elif kind == "columns":  # down projection: whole columns
        protected[:, [1, 2, 3, 9, 30]] = True
    elif kind == "scattered":
        protected = torch.rand(OUT, IN, generator=torch.Generator().manual_seed(3)) < 0.2
    return WeightGuard(protected, mode, factor)


def _masks(method: str, spec: SparsitySpec, guard: WeightGuard | None) -> torch.Tensor:
    weight, act_norm, hessian = _inputs()
    if method == "magnitude":
        return magnitude_mask(weight, spec, guard)
    if method == "wanda":
        return wanda_mask(weight, act_norm, spec, guard)
    if method == "ria":
        return ria_mask(weight, act_norm, spec, guard=guard)[0]
    return sparsegpt_prune(weight, hessian, spec, blocksize=8, guard=guard).mask


METHODS = ("magnitude", "wanda", "ria", "sparsegpt")
SPECS = ("0.5", "0.7", "2:4")


def _valid_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    pruned_per_group = mask.reshape(mask.shape[0], -1, m).sum(dim=2)
    return bool((pruned_per_group == m - n).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec_text", SPECS)
@pytest.mark.parametrize("kind", ["rows", "columns", "scattered"])
def test_keep_protects_and_sparsity_is_exact(method, spec_text, kind):
    spec = SparsitySpec.parse(spec_text)
    guard = _guard(kind)
    plain, protected = _masks(method, spec, None), _masks(method, spec, guard)
    assert int(protected.sum()) == int(plain.sum()), "the quota did not move to other weights"
    if spec.kind == "nm":
        assert _valid_nm(protected, spec.n, spec.m)
        # A group keeps n weights: only its protected weights beyond n can be (and are) pruned.
        in_group = guard.protected.reshape(OUT, -1, spec.m).sum(dim=2)
        pruned_protected = (protected & guard.protected).reshape(OUT, -1, spec.m).sum(dim=2)
        assert torch.equal(pruned_protected, (in_group - spec.n).clamp_min(0))
    else:
        assert not bool((protected & guard.protected).any()), "a protected weight was pruned"
    if spec.kind == "nm":
        pass
    elif method == "wanda":  # per-row method: the rows with room differ by at most one weight
        open_rows = ~guard.protected.all(dim=1)
        counts = protected[open_rows].sum(dim=1)
        assert int(counts.max() - counts.min()) <= 1 or kind == "scattered"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec_text", SPECS)
def test_empty_guard_is_bit_for_bit_unprotected(method, spec_text):
    spec = SparsitySpec.parse(spec_text)
    empty = WeightGuard(torch.zeros(OUT, IN, dtype=torch.bool))
    assert torch.equal(_masks(method, spec, None), _masks(method, spec, empty))
    if method == "sparsegpt":
        weight, _, hessian = _inputs()
        plain = sparsegpt_prune(weight, hessian, spec, blocksize=8)
        guarded = sparsegpt_prune(weight, hessian, spec, blocksize=8, guard=empty)
        assert torch.equal(plain.weight, guarded.weight)


def _brute_force_lowest(values: list[float], protected: list[bool], count: int) -> set[int]:
    """The `count` positions pruned first: unprotected before protected, then by value, then position."""
    order = sorted(range(len(values)), key=lambda j: (protected[j], values[j], j))
    return set(order[:count])


def test_nm_group_with_more_protected_than_kept_stays_valid():
    metric = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.4, 0.7]])
    protected = torch.tensor([[True, True, True, False, True, True, True, True]])
    mask = guarded_mask_for_spec(metric, SparsitySpec.nm(2, 4), WeightGuard(protected), per_row=True)
    assert _valid_nm(mask, 2, 4)
    # group 1: the one unprotected (0.3) and then the least salient protected (0.1)
    assert set(torch.nonzero(mask[0]).flatten().tolist()) == {1, 3, 4, 6}
    for group in range(2):
        values = metric[0, 4 * group:4 * group + 4].tolist()
        flags = protected[0, 4 * group:4 * group + 4].tolist()
        expected = {4 * group + j for j in _brute_force_lowest(values, flags, 2)}
        assert expected == {4 * group + j for j in range(4) if mask[0, 4 * group + j]}


def test_keep_per_matrix_matches_brute_force():
    weight, _, _ = _inputs(1)
    guard = _guard("scattered")
    spec = SparsitySpec.unstructured(0.9)  # more than the unprotected weights: protected ones go last
    mask = magnitude_mask(weight, spec, guard)
    values = weight.abs().flatten().tolist()
    flags = guard.protected.flatten().tolist()
    count = round(0.9 * OUT * IN)
    expected = _brute_force_lowest(values, flags, count)
    assert set(torch.nonzero(mask.flatten()).flatten().tolist()) == expected


@pytest.mark.parametrize("factor", [1.0, 3.0, 10.0])
def test_upweight_multiplies_the_saliency(factor):
    weight, act_norm, _ = _inputs(2)
    guard = _guard("scattered", "upweight", factor)
    mask = wanda_mask(weight, act_norm, SparsitySpec.unstructured(0.5), guard)
    scores = (weight.abs() * act_norm).tolist()
    per_row = int(IN * 0.5)
    for row in range(OUT):
        boosted = [score * (factor if guard.protected[row, j] else 1.0) for j, score in enumerate(scores[row])]
        expected = set(sorted(range(IN), key=lambda j: (boosted[j], j))[:per_row])
        assert set(torch.nonzero(mask[row]).flatten().tolist()) == expected
    if factor == 1.0:
        assert torch.equal(mask, wanda_mask(weight, act_norm, SparsitySpec.unstructured(0.5)))


def test_upweight_keeps_more_protected_weights_than_none():
    weight, act_norm, _ = _inputs(4)
    guard = _guard("scattered", "upweight", 10.0)
    plain = wanda_mask(weight, act_norm, SparsitySpec.unstructured(0.5))
    boosted = wanda_mask(weight, act_norm, SparsitySpec.unstructured(0.5), guard)
    assert int(boosted.sum()) == int(plain.sum())
    assert int((boosted & guard.protected).sum()) < int((plain & guard.protected).sum())


def test_protection_checks_its_input():
    with pytest.raises(UserError, match="mode"):
        Protection.create({0: [1]}, mode="hold")
    with pytest.raises(UserError, match="factor"):
        Protection.create({0: [1]}, mode="upweight", factor=0.5)
    with pytest.raises(UserError, match="non-negative"):
        Protection.create({0: [-1]})
    protection = Protection.create({1: [3, 3, 2], 0: []})
    assert protection.neurons == {1: (2, 3)} and protection.count == 2
    with pytest.raises(UserError, match="neuron 3"):
        protection.check_fits(2, 3)


# ----------------------------------------------------------------------------- the engine


NEURONS = {0: [1, 5, 40], 1: [3, 63]}


def _config(method: str, calibration: str, spec: str, protection: Protection | None) -> PruneConfig:
    return PruneConfig(method=method, calibration=calibration, spec=SparsitySpec.parse(spec), nsamples=4,
                       seqlen=32, seed=0, protection=protection)


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("method,spec", [("magnitude", "0.5"), ("wanda", "0.5"), ("wanda", "2:4"),
                                         ("ria", "0.5"), ("sparsegpt", "0.5"), ("sparsegpt", "2:4")])
def test_engine_keeps_protected_neurons(isolated_cache, calibration_file, family, method, spec):
    loaded = tiny_loaded(family)
    plain = create_variant(loaded, _config(method, calibration_file, spec, None))
    protection = Protection.create(NEURONS, source={"kind": "test"})
    guarded = create_variant(loaded, _config(method, calibration_file, spec, protection))
    assert guarded.variant_id != plain.variant_id
    record = guarded.manifest["protection"]
    assert record["count"] == 5 and record["per_layer"] == {"0": 3, "1": 2}
    assert record["protected_weights"] > 0
    # N:M: a protected neuron's gate/up (fc1) row is a row of groups, each must still prune m - n.
    assert (record["protected_weights_pruned"] == 0) == (SparsitySpec.parse(spec).kind != "nm")
    plain_masks, masks = variant_masks(plain.variant_id), variant_masks(guarded.variant_id)
    layers = loaded.adapter.decoder_layers(loaded.model)
    names = {id(module): name for name, module in loaded.model.named_modules()}
    for index, layer in enumerate(layers):
        prefix = names[id(layer)]
        for linear in (*loaded.adapter.mlp_inputs, loaded.adapter.mlp_output):
            key = f"{prefix}.{linear}.weight"
            mask, reference = masks[key], plain_masks[key]
            assert int(mask.sum()) == int(reference.sum()), key  # exact sparsity
            rows = torch.tensor(NEURONS[index])
            if linear == loaded.adapter.mlp_output:  # columns: at most 1 per group of 4 here
                assert not bool(mask[:, rows].any()), key  # (SparseGPT: kept, with the OBS update)
            elif SparsitySpec.parse(spec).kind != "nm":
                assert not bool(mask[rows].any()), key
    for key, reference in plain_masks.items():  # attention and every other linear: same count
        assert int(masks[key].sum()) == int(reference.sum()), key
    assert guarded.manifest["achieved_sparsity"]["overall"] == plain.manifest["achieved_sparsity"]["overall"]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_empty_protection_is_the_unprotected_variant(isolated_cache, calibration_file, method):
    loaded = tiny_loaded("llama")
    plain_config = _config(method, calibration_file, "0.5", None)
    empty_config = _config(method, calibration_file, "0.5", Protection.create({}, source={"kind": "test"}))
    assert empty_config.protection is None
    assert variant_id(loaded, plain_config) == variant_id(loaded, empty_config)
    plain = create_variant(loaded, plain_config)
    # A protection of layer 1 only leaves layer 0 exactly as without protection.
    later = create_variant(loaded, _config(method, calibration_file, "0.5", Protection.create({1: [2]})))
    plain_masks, later_masks = variant_masks(plain.variant_id), variant_masks(later.variant_id)
    layer0 = [key for key in plain_masks if ".layers.0." in key]
    assert layer0
    for key in layer0:
        assert torch.equal(plain_masks[key], later_masks[key]), key


def test_structured_method_refuses_protection(calibration_file):
    config = PruneConfig(method="flap", calibration=calibration_file, spec=SparsitySpec.neurons(0.2),
                         nsamples=4, seqlen=32, protection=Protection.create({0: [1]}))
    with pytest.raises(UserError, match="does not take protected neurons"):
        config.validate()


def test_protection_outside_the_model_is_refused(isolated_cache, calibration_file):
    loaded = tiny_loaded("llama")
    config = _config("wanda", calibration_file, "0.5", Protection.create({5: [1]}))
    with pytest.raises(UserError, match="layer 5"):
        create_variant(loaded, config)
