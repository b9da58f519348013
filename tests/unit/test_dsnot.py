"""DSnoT refinement: exact count per row and N:M pattern kept; the reconstruction error on the
calibration inputs never increases over the base mask (per row, measured on the inputs themselves);
through the engine on tiny LLaMA, OPT and GPT-2; refused where there is no weight mask to refine."""

from __future__ import annotations

import pytest
import torch

from backend.cli import main
from backend.models.adapters import in_module_layout, weight_matrix
from backend.pruning.dsnot import dsnot_refine
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.methods.sparsegpt import sparsegpt_prune
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import list_variants, variant_masks
from tests.conftest import FAMILIES, tiny_loaded

NSAMPLES, SEQLEN = 4, 32


def _inputs(tokens: int = 512, features: int = 48, seed: int = 0) -> torch.Tensor:
    """[tokens, in]: correlated inputs with non-zero means (what makes E[error] matter)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features ** 0.5
    offset = torch.randn(features, generator=generator)
    return (torch.randn(tokens, features, generator=generator) @ mixing + offset).double()


def _row_errors(dense: torch.Tensor, sparse: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """‖(W − W̃) X‖² per output row on the inputs x [tokens, in]: [out]."""
    return ((x @ (dense.double() - sparse.double()).T) ** 2).sum(dim=0)


def _statistics(x: torch.Tensor):
    return x.T @ x / x.shape[0], x.mean(dim=0), x.pow(2).sum(dim=0).sqrt()


@pytest.mark.parametrize("spec", [SparsitySpec.unstructured(0.6), SparsitySpec.nm(2, 4), SparsitySpec.nm(1, 4)])
def test_dsnot_keeps_counts_and_never_raises_the_error(spec):
    x = _inputs()
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(40, x.shape[1], generator=generator)  # [out, in]
    second, mean, norm = _statistics(x)
    base = wanda_mask(weight, norm.float(), spec)
    result = dsnot_refine(weight, weight, base, second, mean, norm, spec, iterations=100, threshold=0.0)
    assert result.swaps > 0 and not torch.equal(result.mask, base)
    assert torch.equal(result.mask.sum(dim=1), base.sum(dim=1))  # exact count per row
    if spec.kind == "nm":
        groups = result.mask.reshape(weight.shape[0], -1, spec.m)
        assert bool((groups.sum(dim=-1) == spec.m - spec.n).all())  # the pattern, in every group
    assert torch.equal(result.weight, torch.where(result.mask, 0.0, weight.double()))
    before = _row_errors(weight, weight * ~base, x)
    after = _row_errors(weight, result.weight, x)
    assert bool((after <= before * (1 + 1e-12)).all())
    assert float(after.sum()) < float(before.sum())  # and it helps somewhere


def test_dsnot_on_sparsegpt_updated_weights_never_raises_the_error():
    x = _inputs(seed=3)
    weight = torch.randn(32, x.shape[1], generator=torch.Generator().manual_seed(4))
    second, mean, norm = _statistics(x)
    spec = SparsitySpec.unstructured(0.7)
    base = sparsegpt_prune(weight, (2 * second).float(), spec)
    result = dsnot_refine(weight, base.weight, base.mask, second, mean, norm, spec, iterations=100, threshold=0.0)
    assert torch.equal(result.mask.sum(dim=1), base.mask.sum(dim=1))
    grown = base.mask & ~result.mask
    assert torch.equal(result.weight[grown], weight.double()[grown])  # a grown weight comes back dense
    before, after = _row_errors(weight, base.weight, x), _row_errors(weight, result.weight, x)
    assert bool((after <= before * (1 + 1e-12)).all())


def test_dsnot_threshold_stops_rows_whose_mean_error_is_small():
    x = _inputs(seed=5)
    weight = torch.randn(16, x.shape[1], generator=torch.Generator().manual_seed(6))
    second, mean, norm = _statistics(x)
    spec = SparsitySpec.unstructured(0.5)
    base = wanda_mask(weight, norm.float(), spec)
    residual = ((weight.double() * base) @ mean).abs()  # r_i of the base mask
    result = dsnot_refine(weight, weight, base, second, mean, norm, spec, threshold=float(residual.max()) + 1)
    assert result.swaps == 0 and torch.equal(result.mask, base)


def _layer_zero_inputs(loaded, calibration: str) -> dict[int, torch.Tensor]:
    from backend.data.windows import calibration_windows

    windows = calibration_windows(loaded.tokenizer, calibration, NSAMPLES, SEQLEN, 0, max_length=loaded.max_length)
    layer = loaded.adapter.decoder_layers(loaded.model)[0]
    seen: dict[int, torch.Tensor] = {}
    handles = [module.register_forward_pre_hook(
        lambda mod, args: seen.__setitem__(id(mod), args[0].reshape(-1, args[0].shape[-1]).double()))
        for module in loaded.adapter.prunable_linears(layer).values()]
    with torch.no_grad():
        loaded.model(input_ids=windows, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sparsity", ["0.7", "2:4"])
def test_wanda_dsnot_variant(isolated_cache, calibration_file, family, sparsity):
    loaded = tiny_loaded(family)
    spec = SparsitySpec.parse(sparsity)
    common = {"calibration": calibration_file, "spec": spec, "nsamples": NSAMPLES, "seqlen": SEQLEN}
    base = create_variant(loaded, PruneConfig("wanda", **common)).manifest
    refined = create_variant(loaded, PruneConfig("wanda", refine="dsnot", dsnot_threshold=0.0, **common)).manifest
    assert refined["id"] != base["id"] and "-dsnot-" in refined["id"]
    assert refined["achieved_sparsity"]["overall"] == base["achieved_sparsity"]["overall"]
    base_masks, refined_masks = variant_masks(base["id"]), variant_masks(refined["id"])
    assert base_masks.keys() == refined_masks.keys()
    modules = dict(loaded.model.named_modules())
    swaps = sum(note.get("dsnot_swaps", 0) for note in refined["method_notes"].values())
    assert swaps > 0
    for name, mask in refined_masks.items():
        module = modules[name.removesuffix(".weight")]
        rows = in_module_layout(module, mask)  # [out, in] (GPT-2's Conv1D stores [in, out])
        base_rows = in_module_layout(module, base_masks[name])
        assert torch.equal(rows.sum(dim=1), base_rows.sum(dim=1)), name
        if spec.kind == "nm":
            assert bool((rows.reshape(rows.shape[0], -1, 4).sum(dim=-1) == 2).all()), name
    # Layer 0 sees the same inputs in both runs: its error on them never increases.
    inputs = _layer_zero_inputs(loaded, calibration_file)
    layer = loaded.adapter.decoder_layers(loaded.model)[0]
    for module in loaded.adapter.prunable_linears(layer).values():
        name = next(key for key, value in modules.items() if value is module) + ".weight"
        dense = weight_matrix(module).detach()  # [out, in]
        refined_mask = in_module_layout(module, refined_masks[name])
        base_mask = in_module_layout(module, base_masks[name])
        x = inputs[id(module)]
        before = _row_errors(dense, dense * ~base_mask, x)
        after = _row_errors(dense, dense * ~refined_mask, x)
        assert bool((after <= before * (1 + 1e-9) + 1e-12).all()), name


@pytest.mark.parametrize("argv,needle", [
    (["--method", "mi", "--neuron-ratio", "0.2", "--refine", "dsnot"], "structured"),
    (["--method", "random-blocks", "--refine", "dsnot"], "depth"),
    (["--method", "wanda", "--dsnot-iterations", "0"], "dsnot_iterations"),
])
def test_dsnot_bad_input_cli(isolated_cache, tiny_model_dir, capsys, argv, needle):
    assert main(["prune", "--model", str(tiny_model_dir("llama")), "--nsamples", "2", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and needle in errors[0], err
    assert list_variants() == []
