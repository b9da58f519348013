"""NSA end to end on tiny models with hand-made variants on disk, bad input, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from backend.cli import main
from backend.data.encoding import encode_for_attribution
from backend.errors import NotFoundError, UserError
from backend.nsa.capture import NeuronCapture
from backend.nsa.causal import CAUSAL_DRAWS
from backend.nsa.schema import validate_result
from backend.nsa.service import attribute
from backend.pruning.variants import variant_applied, write_variant
from tests.conftest import tiny_loaded

TEXT = "The movie was painfully slow, but the acting was beautiful."
WORDS = ["painfully slow", "beautiful"]


def full_activations(loaded, text: str) -> dict[int, torch.Tensor]:
    """Brute force: every layer's ``[tokens, neurons]`` on the input NSA uses (start token first)."""
    encoded = encode_for_attribution(loaded.tokenizer, text, loaded.max_length)
    with torch.no_grad(), NeuronCapture(loaded.model, loaded.adapter) as capture:
        loaded.model(input_ids=torch.tensor([encoded.input_ids]))
    return {layer: capture.batched(layer, 1)[0] for layer in capture.layers}


def _manifest(loaded) -> dict:
    return {"base_model": loaded.name, "method": "hand", "calibration": None, "sparsity": "hand",
            "achieved_sparsity": {"overall": 0.0, "per_linear": {}}}


def _down_name(loaded, layer: int) -> str:
    names = {id(m): n for n, m in loaded.model.named_modules()}
    module = loaded.adapter.neuron_module(loaded.adapter.decoder_layers(loaded.model)[layer])
    return names[id(module)] + ".weight"


def _neuron_row(result, neuron):
    heat = result["heatmaps"][0]["neurons"]
    return next(row for row in heat if (row["layer"], row["index"]) == (neuron["layer"], neuron["index"]))


def test_identity_variant_gives_exactly_zero_drops(tiny, isolated_cache):
    name = _down_name(tiny, 0)
    shape = dict(tiny.model.named_parameters())[name].shape
    write_variant("identity", _manifest(tiny), masks={name: torch.zeros(shape, dtype=torch.bool)})
    result = attribute(tiny, [TEXT], words=WORDS, variants=["identity"], top_k=6)
    validate_result(json.loads(json.dumps(result)))
    (block,) = result["comparison"]
    assert all(value == 0.0 for value in block["aggregate"].values())
    for neuron in result["neurons"]:
        variant = neuron["variants"]["identity"]
        assert variant["drop_influential"] == 0.0 and variant["weights_removed"]["fraction"] == 0.0
        row = _neuron_row(result, neuron)
        assert row["variants"]["identity"] == row["dense"]
    assert result["texts"][0]["influential"]["source"] == "user"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hand_pruned_neuron_is_seen_exactly(family, isolated_cache):
    loaded = tiny_loaded(family)
    dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    first = attribute(loaded, [TEXT], words=WORDS, top_k=4)
    target = first["neurons"][0]
    layer, index = target["layer"], target["index"]
    # Prune the whole input row of the top neuron: up_proj (LLaMA) or c_fc (GPT-2, [in, out] layout).
    if family == "llama":
        name = f"model.layers.{layer}.mlp.up_proj.weight"
        mask = torch.zeros(64, 32, dtype=torch.bool)
        mask[index] = True
        expected = {"fraction": 32 / 96, "inputs": 32 / 64, "output": 0.0}
    else:
        name = f"transformer.h.{layer}.mlp.c_fc.weight"
        mask = torch.zeros(32, 64, dtype=torch.bool)
        mask[:, index] = True
        expected = {"fraction": 32 / 64, "inputs": 1.0, "output": 0.0}
    write_variant("hand", _manifest(loaded), masks={name: mask})

    result = attribute(loaded, [TEXT], words=WORDS, variants=["hand"], top_k=4)
    assert [(n["layer"], n["index"]) for n in result["neurons"]] == [(n["layer"], n["index"]) for n in first["neurons"]]
    top = result["neurons"][0]
    assert top["variants"]["hand"]["weights_removed"] == pytest.approx(expected)
    if family == "llama":  # silu(gate) * 0: the neuron is silent in the variant
        assert top["variants"]["hand"]["drop_influential"] == 1.0
        assert _neuron_row(result, top)["variants"]["hand"] == [0.0] * len(result["texts"][0]["tokens"])
    # Every variant activation equals a brute-force capture of the variant.
    with variant_applied(loaded, "hand"):
        pruned = full_activations(loaded, TEXT)
    for neuron in result["neurons"]:
        row = _neuron_row(result, neuron)
        captured = pruned[neuron["layer"]][:, neuron["index"]]
        torch.testing.assert_close(torch.tensor(row["variants"]["hand"]), captured, rtol=1e-5, atol=1e-6)
    # The loaded model is dense again.
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, dense_state[key]), key


def test_several_texts_aggregate_and_heatmaps_match_full_capture():
    loaded = tiny_loaded("opt")
    texts = [TEXT, "A delightful, warm and funny film that never drags.", "Slow, slow, slow."]
    result = attribute(loaded, texts, words=["slow", "warm", "funny"], top_k=8)
    for neuron in result["neurons"]:
        assert neuron["score"] == pytest.approx(sum(neuron["text_scores"]) / 3)
        for heat in result["heatmaps"]:
            row = next(r for r in heat["neurons"] if (r["layer"], r["index"]) == (neuron["layer"], neuron["index"]))
            full = full_activations(loaded, texts[heat["text"]])[neuron["layer"]][:, neuron["index"]]
            torch.testing.assert_close(torch.tensor(row["dense"]), full, rtol=1e-5, atol=1e-6)
            assert row["scale"] == pytest.approx(float(full[1:].abs().max()), rel=1e-5)  # not the start token
    scores = [n["score"] for n in result["neurons"]]
    assert scores == sorted(scores, reverse=True)
    assert result["texts"][1]["influential"]["missing"] == ["slow"]
    assert any("not in the text" in w for w in result["warnings"])


def test_bad_input_is_a_clear_user_error(isolated_cache):
    loaded = tiny_loaded("llama")
    with pytest.raises(UserError, match="empty text"):
        attribute(loaded, ["   "], words=WORDS)
    with pytest.raises(UserError, match="no text"):
        attribute(loaded, [], words=WORDS)
    with pytest.raises(NotFoundError, match="unknown variant"):
        attribute(loaded, [TEXT], words=WORDS, variants=["no-such-variant"])
    with pytest.raises(UserError, match="invalid variant id"):
        attribute(loaded, [TEXT], words=WORDS, variants=["../escape"])
    with pytest.raises(UserError, match="none of the given words"):
        attribute(loaded, [TEXT], words=["zebra", "quantum"])
    with pytest.raises(UserError, match="top-k"):
        attribute(loaded, [TEXT], words=WORDS, top_k=0)
    with pytest.raises(UserError, match="unknown task"):
        attribute(loaded, [TEXT], words=WORDS, task="poetry")
    write_variant("other-base", {**_manifest(loaded), "base_model": "someone-else"},
                  masks={_down_name(loaded, 0): torch.zeros(32, 64, dtype=torch.bool)})
    with pytest.raises(UserError, match="pruned from"):
        attribute(loaded, [TEXT], words=WORDS, variants=["other-base"])


def test_text_longer_than_the_context_is_truncated_with_a_warning():
    loaded = tiny_loaded("gpt2")
    result = attribute(loaded, ["slow " * 300 + "beautiful"], words=["slow", "beautiful"], top_k=3)
    text = result["texts"][0]
    assert text["truncated"] and len(text["tokens"]) == loaded.max_length
    assert text["offsets"][0] == [0, 0] and text["tokens"][0] == ""  # the start token
    assert any("truncated" in w for w in result["warnings"])
    assert text["influential"]["missing"] == ["beautiful"]


def test_cli_attribute_writes_a_valid_json(tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    out = tmp_path / "nsa.json"
    code = main(["attribute", "--model", str(model_dir), "--text", TEXT, "--words", "slow,beautiful",
                 "--top-k", "5", "--ablate", "--json", str(out)])
    assert code == 0
    result = validate_result(json.loads(out.read_text()))
    assert len(result.neurons) == 5 and result.ablation["draws"] == CAUSAL_DRAWS
    assert result.ablation["examples"] == 1 and result.causal is None  # one text: in-sample only
    assert [w.word for w in result.texts[0].influential.words] == ["slow", "beautiful"]
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "rank layer neuron" in printed
    assert "ablation: In-sample (selected on this text)" in printed


def test_cli_file_input_and_errors(tiny_model_dir, tmp_path, capsys):
    model_dir = str(tiny_model_dir("opt"))
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text(json.dumps({"text": TEXT, "label_text": "negative"}) + "\n\n"
                     + json.dumps({"text": "Warm and funny."}) + "\n")
    out = tmp_path / "nsa.json"
    assert main(["attribute", "--model", model_dir, "--file", str(jsonl), "--words", "slow,warm",
                 "--top-k", "3", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [t["label"] for t in payload["texts"]] == ["negative", None]

    bad = [
        ["--text", ""],
        ["--text", TEXT, "--words", "zebra"],
        ["--text", TEXT, "--variants", "nope"],
        ["--file", str(tmp_path / "absent.txt")],
        ["--text", TEXT, "--words", "slow", "--json", str(tmp_path / "no" / "dir.json")],
        ["--text", TEXT, "--file", str(jsonl)],
    ]
    capsys.readouterr()
    for extra in bad:
        assert main(["attribute", "--model", model_dir, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == ["nsa.json"]


def test_start_token_goes_in_front_unless_the_tokenizer_adds_one():
    from tokenizers.processors import TemplateProcessing

    from backend.data.encoding import encode_text
    from tests.conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()  # EOS only, adds nothing
    plain = encode_text(tokenizer, TEXT, 256)
    encoded = encode_for_attribution(tokenizer, TEXT, 256)
    assert encoded.input_ids == [tokenizer.eos_token_id, *plain.input_ids]
    assert encoded.offsets == [(0, 0), *plain.offsets] and encoded.tokens[1:] == plain.tokens
    assert not encoded.truncated
    short = encode_for_attribution(tokenizer, TEXT, 5)
    assert len(short.input_ids) == 5 and short.truncated and short.input_ids[1:] == plain.input_ids[:4]

    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokenizer.eos_token_id)])
    with_bos = encode_text(tokenizer, TEXT, 256)
    assert with_bos.input_ids[0] == tokenizer.eos_token_id and with_bos.offsets[0] == (0, 0)
    assert encode_for_attribution(tokenizer, TEXT, 256).input_ids == with_bos.input_ids
