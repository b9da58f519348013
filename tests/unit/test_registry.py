"""The method registry: a method added by one registration prunes over the CLI and HTTP with its own
options; options are validated once; variants stored by other code are stale and recomputed."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from pydantic import Field

from backend.cli import main
from backend.errors import UserError
from backend.models.adapters import in_module_layout, weight_matrix
from backend.pruning import config as config_module
from backend.pruning.engine import PruneConfig, create_variant, variant_id
from backend.pruning.registry import (
    LayerToPrune,
    MethodOptions,
    Pruned,
    PruningMethod,
    get_method,
    methods,
    register,
)
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import list_variants, variant_masks
from tests.conftest import tiny_loaded
from tests.unit.test_api import make_client, wait_for_job  # noqa: F401 - make_client is a fixture


class KeepEveryOptions(MethodOptions):
    keep_every: int = Field(default=2, ge=2, le=8, description="keep input column j when j % keep_every == 0")


def keep_every_mask(weight: torch.Tensor, keep_every: int) -> torch.Tensor:
    """weight [out, in] -> mask [out, in]: every column not a multiple of keep_every is pruned."""
    pruned_columns = torch.arange(weight.shape[1], device=weight.device) % keep_every != 0
    return pruned_columns.expand(weight.shape).clone()


def _prune_keep_every(layer: LayerToPrune, options: KeepEveryOptions, _spec: SparsitySpec) -> list[Pruned]:
    return [Pruned(name, keep_every_mask(layer.weight(name), options.keep_every)) for name in layer.linears]


# The whole of adding a method: one registration.
register(PruningMethod(name="keep-every", description="toy: keep every k-th input column",
                       prune=_prune_keep_every, options=KeepEveryOptions, needs=None))


def _assert_toy_variant(loaded, manifest: dict, keep_every: int) -> None:
    expected_sparsity = 1 - 1 / keep_every  # tiny layers have 32 or 64 inputs: exact
    per_linear = manifest["achieved_sparsity"]["per_linear"]
    layers = loaded.adapter.decoder_layers(loaded.model)
    assert len(per_linear) == sum(len(loaded.adapter.prunable_linears(layer)) for layer in layers)
    assert all(value == expected_sparsity for value in per_linear.values()), per_linear
    assert manifest["options"] == {"keep_every": keep_every}
    masks = variant_masks(manifest["id"])
    modules = dict(loaded.model.named_modules())
    for name, mask in masks.items():
        module = modules[name.removesuffix(".weight")]
        expected = in_module_layout(module, keep_every_mask(weight_matrix(module), keep_every))
        assert torch.equal(mask, expected), name


def test_a_registered_method_prunes_over_the_cli(isolated_cache, tiny_model_dir, capsys):
    model_dir = tiny_model_dir("llama")
    assert main(["prune", "--model", str(model_dir), "--method", "keep-every", "--keep-every", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("keep-every-none-s0.5-")
    assert "achieved sparsity 0.7500" in out[1]
    [manifest] = list_variants()
    assert manifest["stale"] is False
    _assert_toy_variant(tiny_loaded("llama"), manifest, keep_every=4)
    assert main(["methods", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["keep-every"]["options"]["properties"]["keep_every"]["maximum"] == 8


@pytest.mark.parametrize("argv,needle", [
    (["--method", "keep-every", "--keep-every", "1"], "keep_every"),  # below the option's bound
    (["--method", "keep-every", "--keep-every", "two"], "keep-every"),  # not an integer
    (["--method", "wanda", "--keep-every", "4"], "unknown option"),  # another method's option
    (["--method", "keep-every", "--alpha", "0.5"], "unknown option"),
    (["--method", "sparsegpt", "--percdamp", "1.5"], "percdamp"),
])
def test_cli_option_errors_are_one_line(isolated_cache, tiny_model_dir, capsys, argv, needle):
    assert main(["prune", "--model", str(tiny_model_dir("llama")), *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert list_variants() == []


def test_a_registered_method_prunes_over_http(make_client):  # noqa: F811 - the imported fixture
    loaded = tiny_loaded("llama")
    client = make_client(loaded=loaded)
    described = {row["name"]: row for row in client.get("/methods").json()}
    assert set(described) >= {"magnitude", "wanda", "sparsegpt", "ria", "mi", "keep-every"}
    assert described["sparsegpt"]["options"]["properties"]["percdamp"]["maximum"] == 1.0
    request = {"method": "keep-every", "sparsity": "0.5", "options": {"keep_every": 8}}
    accepted = client.post("/variants", json=request)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["variant_id"] == accepted.json()["variant_id"]
    assert job["result"]["achieved_sparsity"] == 1 - 1 / 8
    manifest = client.get(f"/variants/{job['result']['variant_id']}").json()
    _assert_toy_variant(loaded, manifest, keep_every=8)
    for options, needle in (({"keep_every": 9}, "keep_every"), ({"alpha": 1.0}, "unknown option")):
        refused = client.post("/variants", json={**request, "options": options})
        assert refused.status_code == 422 and needle in refused.json()["detail"], refused.text


def test_options_are_validated_once_with_the_methods_bounds():
    sparsegpt, ria = get_method("sparsegpt"), get_method("ria")
    # dump_options: the method's own options, the OWL / DSnoT fields only where not at their defaults
    assert sparsegpt.dump_options(sparsegpt.parse_options({})) == {"blocksize": 128, "percdamp": 0.01}
    assert sparsegpt.parse_options({"percdamp": 0}).percdamp == 0  # 0 is allowed (a tiny fallback damps)
    for bad in ({"percdamp": -0.1}, {"percdamp": 1.01}, {"blocksize": 0}, {"blocksize": "x"}):
        with pytest.raises(UserError, match="sparsegpt: "):
            sparsegpt.parse_options(bad)
    with pytest.raises(UserError, match="alpha"):
        ria.parse_options({"alpha": -1})
    with pytest.raises(UserError, match="multiple of m"):
        PruneConfig("sparsegpt", spec=SparsitySpec.nm(2, 4), blocksize=6).validate()
    assert list(methods())[:5] == ["magnitude", "wanda", "sparsegpt", "ria", "mi"]


def _toy_config(**changes) -> PruneConfig:
    return PruneConfig("keep-every", spec=SparsitySpec.unstructured(0.5), **changes)


def test_a_variant_from_other_code_is_stale_and_recomputed(isolated_cache, monkeypatch):
    loaded = tiny_loaded("gpt2")
    first = create_variant(loaded, _toy_config(keep_every=4))
    assert first.variant_id == variant_id(loaded, _toy_config(keep_every=4))
    assert first.manifest["code_version"] == config_module.code_version(get_method("keep-every"))
    assert [row["stale"] for row in list_variants()] == [False]
    # Another version of the code (any edit of a producing module changes the hash of its source).
    monkeypatch.setattr(config_module, "code_version", lambda _method: "0" * 12)
    assert [row["stale"] for row in list_variants()] == [True]
    second = create_variant(loaded, _toy_config(keep_every=4))
    assert not second.reused and second.variant_id != first.variant_id
    assert {row["id"]: row["stale"] for row in list_variants()} == {first.variant_id: True,
                                                                     second.variant_id: False}


@pytest.mark.parametrize("module_name", ["backend.pruning.stats", "backend.data.offline_sets",
                                         "backend.data.prompt_formats"])
def test_the_code_version_follows_the_producing_sources(tmp_path, monkeypatch, module_name):
    """An edit to the statistics or to the code choosing the calibration text gives new ids."""
    method = get_method("wanda")
    before = config_module.code_version(method)
    assert before == config_module.code_version(method) and len(before) == 12
    assert config_module.code_version(get_method("ria")) != before  # each method's own module counts
    module = importlib.import_module(module_name)
    copy = tmp_path / Path(module.__file__).name
    copy.write_text(Path(module.__file__).read_text(encoding="utf-8") + "\n# an edit\n", encoding="utf-8")
    monkeypatch.setattr(module, "__file__", str(copy))
    config_module._source_digest.cache_clear()
    assert config_module.code_version(method) != before
