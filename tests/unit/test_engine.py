"""The layer-sequential engine and variants on tiny Llama, OPT and GPT-2 models."""

from __future__ import annotations

import json

import pytest
import torch

from backend.cli import main
from backend.data.windows import calibration_windows
from backend.errors import UserError
from backend.models.adapters import weight_matrix
from backend.pruning.engine import (
    PruneConfig,
    capture_decoder_inputs,
    collect_statistics,
    create_variant,
)
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import (
    apply_overlay,
    list_variants,
    load_variant,
    variant_applied,
    variant_masks,
)
from tests.conftest import TINY_CORPUS, tiny_loaded

NSAMPLES, SEQLEN = 4, 32


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(TINY_CORPUS * 6), encoding="utf-8")
    return f"file:{path}"


def _config(method: str, calibration: str, spec: str = "0.5", **options) -> PruneConfig:
    return PruneConfig(method=method, calibration=calibration, spec=SparsitySpec.parse(spec),
                       nsamples=NSAMPLES, seqlen=SEQLEN, seed=0, **options)


def _dense_state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("method,spec", [
    ("magnitude", "0.5"), ("wanda", "0.5"), ("wanda", "2:4"), ("sparsegpt", "0.6"),
    ("sparsegpt", "2:4"), ("ria", "0.5"), ("ria", "4:8"),
])
def test_achieved_sparsity_and_dense_restored(tiny, isolated_cache, calibration_file, method, spec):
    dense = _dense_state(tiny.model)
    result = create_variant(tiny, _config(method, calibration_file, spec))
    target = SparsitySpec.parse(spec).target_sparsity
    per_linear = result.manifest["achieved_sparsity"]["per_linear"]
    layers = tiny.adapter.decoder_layers(tiny.model)
    expected_linears = sum(len(tiny.adapter.prunable_linears(layer)) for layer in layers)
    assert len(per_linear) == expected_linears
    for name, achieved in per_linear.items():
        assert achieved == pytest.approx(target, abs=1 / 32), name  # rows of 32/64 inputs
    # The loaded model is dense again, bit for bit, after the variant was written.
    for name, tensor in tiny.model.state_dict().items():
        assert torch.equal(tensor, dense[name]), name
    # Applying the overlay zeroes exactly the stored masks and nothing outside decoder linears.
    masks = variant_masks(result.variant_id)
    apply_overlay(tiny.model, result.variant_id)
    changed = {n for n, t in tiny.model.state_dict().items() if not torch.equal(t, dense[n])}
    assert changed <= set(masks)
    assert all(".weight" in name and "embed" not in name and "lm_head" not in name for name in masks)
    for name, mask in masks.items():
        assert torch.all(tiny.model.state_dict()[name][mask] == 0)


def test_nm_groups_valid_in_every_linear(tiny, isolated_cache, calibration_file):
    result = create_variant(tiny, _config("wanda", calibration_file, "2:4"))
    with variant_applied(tiny, result.variant_id):
        for layer in tiny.adapter.decoder_layers(tiny.model):
            for module in tiny.adapter.prunable_linears(layer).values():
                groups = weight_matrix(module).reshape(-1, 4)
                assert torch.all((groups == 0).sum(dim=1) == 2)


def _layer_inputs(loaded, layer_index: int, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every linear's input in one layer, [tokens, in] in float64, from a full forward of the model."""
    layer = loaded.adapter.decoder_layers(loaded.model)[layer_index]
    inputs: dict[str, torch.Tensor] = {}

    def recorder(name):
        def record(_module, args):  # returns None: a pre-hook's return value would replace args
            inputs[name] = args[0].reshape(-1, args[0].shape[-1]).double()
        return record

    handles = [module.register_forward_pre_hook(recorder(name))
               for name, module in loaded.adapter.prunable_linears(layer).items()]
    try:
        with torch.no_grad():
            loaded.model(input_ids=windows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def _layer_input_norms(loaded, layer_index: int, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of every linear's input in one layer, from full forward passes of the model."""
    return {name: x.pow(2).sum(dim=0).sqrt().float()
            for name, x in _layer_inputs(loaded, layer_index, windows).items()}


def test_statistics_pass_equals_full_forwards_and_stops_early(tiny):
    # The statistics pass stops once every linear has seen its input; what it gathered must equal
    # what hooks see in a full forward of the model, and the last linear must never have run.
    windows = torch.randint(5, 60, (3, 16), generator=torch.Generator().manual_seed(0))
    layers = tiny.adapter.decoder_layers(tiny.model)
    with torch.no_grad():
        hidden, calls_per_batch = capture_decoder_inputs(tiny.model, layers, [windows], torch.device("cpu"))
    linears = tiny.adapter.prunable_linears(layers[0])
    last_name = list(linears)[-1]
    last_calls = []
    handle = linears[last_name].register_forward_hook(lambda *_: last_calls.append(1))
    try:
        stats = collect_statistics(layers[0], linears, hidden, [calls_per_batch[0][0]],
                                   torch.device("cpu"), hessian=True)
    finally:
        handle.remove()
    assert last_calls == [] and set(stats) == set(linears)
    inputs = _layer_inputs(tiny, 0, windows)
    assert set(inputs) == set(linears)
    for name, x in inputs.items():
        torch.testing.assert_close(stats[name].act_norm.double(), x.pow(2).sum(0).sqrt(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[name].hessian.double(), 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_prune_stopped_midway_restores_the_weights_and_writes_nothing(
        isolated_cache, calibration_file, method):
    # How a cancelled job ends: its progress callback raises at the second layer.
    loaded = tiny_loaded("llama", layers=2)
    dense = _dense_state(loaded.model)

    class Stop(Exception):
        pass

    def progress(fraction, message):
        if message.startswith("layer 2/"):
            raise Stop

    with pytest.raises(Stop):
        create_variant(loaded, _config(method, calibration_file), progress=progress)
    assert all(torch.equal(tensor, dense[name]) for name, tensor in loaded.model.state_dict().items())
    assert list_variants() == [] and not any(isolated_cache.variants_dir.glob("*"))
    assert create_variant(loaded, _config(method, calibration_file)).reused is False  # a new run works


def test_layer_two_sees_pruned_layer_one(isolated_cache, calibration_file):
    loaded = tiny_loaded("llama", layers=2)
    result = create_variant(loaded, _config("wanda", calibration_file))
    masks = variant_masks(result.variant_id)
    windows = calibration_windows(loaded.tokenizer, calibration_file, NSAMPLES, SEQLEN, 0)
    dense_norms = _layer_input_norms(loaded, 1, windows)
    # Layer 1's statistics come from pruned layer 0 and a still-dense layer 1 (as in Wanda's
    # reference): prune only layer 0 of an identical model before measuring.
    layer0_pruned = tiny_loaded("llama", layers=2)
    params = dict(layer0_pruned.model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name.startswith("model.layers.0."):
                params[name].masked_fill_(mask, 0)
    pruned_norms = _layer_input_norms(layer0_pruned, 1, windows)
    layer = loaded.adapter.decoder_layers(loaded.model)[1]
    differs = 0
    for name, module in loaded.adapter.prunable_linears(layer).items():
        stored = masks[f"model.layers.1.{name}.weight"]
        weight = weight_matrix(module)
        spec = SparsitySpec.unstructured(0.5)
        assert torch.equal(stored, wanda_mask(weight, pruned_norms[name], spec)), name
        differs += not torch.equal(stored, wanda_mask(weight, dense_norms[name], spec))
    assert differs > 0  # the test can tell the sequential engine from a one-shot one


def test_same_seed_same_variant_other_seed_other(tiny, isolated_cache, calibration_file, tmp_path,
                                                  monkeypatch):
    first = create_variant(tiny, _config("ria", calibration_file))
    again = create_variant(tiny, _config("ria", calibration_file))
    assert again.reused and again.variant_id == first.variant_id
    first_masks = variant_masks(first.variant_id)

    from backend.config import get_settings

    monkeypatch.setenv("PRUNELENS_CACHE_DIR", str(tmp_path / "other-cache"))
    get_settings.cache_clear()
    recomputed = create_variant(tiny, _config("ria", calibration_file))
    assert not recomputed.reused and recomputed.variant_id == first.variant_id
    for name, mask in variant_masks(recomputed.variant_id).items():
        assert torch.equal(mask, first_masks[name])
    other_seed = create_variant(tiny, PruneConfig(method="ria", calibration=calibration_file,
                                                  spec=SparsitySpec.unstructured(0.5),
                                                  nsamples=NSAMPLES, seqlen=SEQLEN, seed=1))
    assert other_seed.variant_id != first.variant_id


def test_sparsegpt_variant_reloads_equal_weights(isolated_cache, calibration_file, tiny_model_dir):
    model_dir = tiny_model_dir("gpt2")
    from backend.models.loader import load_model

    loaded = load_model(str(model_dir))
    result = create_variant(loaded, _config("sparsegpt", calibration_file))
    assert result.manifest["overlay"]["weights"] and not result.manifest["overlay"]["masks"]
    fresh = load_variant(str(model_dir.resolve()), result.variant_id)
    with variant_applied(loaded, result.variant_id):
        for (name, a), (_, b) in zip(loaded.model.state_dict().items(),
                                     fresh.model.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    # SparseGPT updates kept weights: some kept value differs from the dense one.
    dense = dict(loaded.model.named_parameters())
    name = result.manifest["overlay"]["weights"][0]
    updated = dict(fresh.model.named_parameters())[name]
    kept = updated != 0
    assert not torch.equal(updated[kept], dense[name][kept])


def test_mi_removes_whole_neurons(isolated_cache, calibration_file):
    loaded = tiny_loaded("opt")
    result = create_variant(loaded, PruneConfig(method="mi", calibration=calibration_file,
                                                spec=SparsitySpec.neurons(0.25),
                                                nsamples=NSAMPLES, seqlen=SEQLEN))
    with variant_applied(loaded, result.variant_id):
        for layer in loaded.adapter.decoder_layers(loaded.model):
            fc1, fc2 = layer.fc1, layer.fc2
            dead_rows = (fc1.weight == 0).all(dim=1) & (fc1.bias == 0)
            dead_cols = (fc2.weight == 0).all(dim=0)
            assert int(dead_rows.sum()) == 16  # 25% of 64 neurons
            assert torch.equal(dead_rows, dead_cols)


def test_variants_listed_with_manifest(tiny, isolated_cache, calibration_file):
    result = create_variant(tiny, _config("wanda", calibration_file))
    listed = list_variants()
    assert [row["id"] for row in listed] == [result.variant_id]
    manifest = listed[0]
    for key in ("base_model", "method", "calibration", "sparsity", "nsamples", "seqlen", "seed",
                "achieved_sparsity", "timings", "versions"):
        assert key in manifest
    assert manifest["calibration_identity"].startswith("file:")


@pytest.mark.parametrize("argv,needle", [
    (["--method", "pruneit"], "invalid choice"),
    (["--method", "wanda", "--calibration", "nosuchset"], "nosuchset"),
    (["--method", "wanda", "--sparsity", "1.5"], "sparsity"),
    (["--method", "wanda", "--sparsity", "0"], "sparsity"),
    (["--method", "wanda", "--pattern", "4:2"], "4:2"),
    (["--method", "wanda", "--pattern", "2-4"], "2-4"),
    (["--method", "wanda", "--seqlen", "0"], "seqlen"),
    (["--method", "mi"], "neuron-ratio"),
    (["--method", "wanda", "--neuron-ratio", "0.2"], "neuron-ratio"),
])
def test_cli_bad_input(isolated_cache, tiny_model_dir, capsys, argv, needle):
    model_dir = tiny_model_dir("llama")
    assert main(["prune", "--model", str(model_dir), "--nsamples", "2", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and needle in errors[0], err
    assert "Traceback" not in "\n".join(err)
    assert list_variants() == []
    variants_dir = isolated_cache.variants_dir
    assert not variants_dir.exists() or not any(variants_dir.iterdir())


def test_cli_model_without_layers(isolated_cache, tmp_path, capsys):
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model("llama", layers=0)
    model.save_pretrained(tmp_path / "empty")
    build_tiny_tokenizer().save_pretrained(tmp_path / "empty")
    assert main(["prune", "--model", str(tmp_path / "empty"), "--method", "magnitude"]) == 2
    assert "no prunable" in capsys.readouterr().err


def test_cli_prune_prints_id_and_sparsity(isolated_cache, tiny_model_dir, calibration_file, capsys):
    model_dir = tiny_model_dir("llama")
    argv = ["prune", "--model", str(model_dir), "--method", "wanda", "--calibration",
            calibration_file, "--pattern", "2:4", "--nsamples", "2", "--seqlen", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("wanda-file-2of4-")
    assert "achieved sparsity 0.5000 (target 0.5000)" in out[1]
    assert main(argv) == 0
    assert "(reused)" in capsys.readouterr().out
    assert main(["variants", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["sparsity"] == "2:4"


def test_bad_config_raises_before_work():
    with pytest.raises(UserError, match="unknown method"):
        PruneConfig(method="obs", calibration="c4").validate()
    with pytest.raises(UserError, match="channel permutation"):
        _config("ria", "c4", "0.5", channel_permutation=True).validate()
