"""Per-neuron facts read from a model's weights or one forward: weights removed, logit effects, test text.

Logit effects: neuron j of layer l writes ``a_j · W_down[:, j]`` into the residual stream. Its
direct effect on the logits is that column through the final norm and the unembedding. The norm
is taken as its weight only (elementwise scale; no centering, no division by the RMS, no bias):
a direction, whose magnitude depends on the rest of the residual stream and not on the neuron.
OPT's ``project_out`` (when present) follows the norm, as in the model.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from backend.errors import UserError
from backend.models.adapters import weight_matrix
from backend.models.hooks import checked_layers, neuron_hooks
from backend.models.loader import LoadedModel

_FINAL_NORMS = ("model.norm", "model.language_model.norm", "model.decoder.final_layer_norm", "transformer.ln_f")


@torch.inference_mode()
def weights_removed(dense: LoadedModel, variant: LoadedModel) -> list[torch.Tensor]:
    """Per layer ``[3, N]``: the fraction of each neuron's weights (down-projection column and
    MLP input rows) non-zero in the dense model and zero in the variant; then of the input rows
    only; then of the column only."""
    out = []
    dense_layers = dense.adapter.decoder_layers(dense.model)
    variant_layers = variant.adapter.decoder_layers(variant.model)
    for dense_layer, variant_layer in zip(dense_layers, variant_layers, strict=True):
        neurons = dense.adapter.neuron_count(dense.model)
        removed_in = torch.zeros(neurons, dtype=torch.long)
        size_in = 0
        for before_module, after_module in zip(dense.adapter.neuron_input_modules(dense_layer),
                                               variant.adapter.neuron_input_modules(variant_layer), strict=True):
            before, after = weight_matrix(before_module), weight_matrix(after_module)  # [N, hidden]
            removed_in = removed_in + ((before != 0) & (after == 0)).sum(1).cpu()
            size_in += before.shape[1]
        before = weight_matrix(dense.adapter.neuron_module(dense_layer))  # [hidden, N]
        after = weight_matrix(variant.adapter.neuron_module(variant_layer))
        removed_out = ((before != 0) & (after == 0)).sum(0).cpu()
        size_out = before.shape[0]
        out.append(torch.stack([(removed_in + removed_out) / (size_in + size_out),
                                removed_in / size_in, removed_out / size_out]).double())
    return out


def _final_norm(model: torch.nn.Module) -> torch.nn.Module:
    for path in _FINAL_NORMS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise UserError(f"{type(model).__name__}: no final norm found at {', '.join(_FINAL_NORMS)}")


@torch.inference_mode()
def logit_direction(loaded: LoadedModel, layer: int, neuron: int) -> torch.Tensor:
    """The neuron's direct effect on the logits per unit activation: [vocab] (see module docstring)."""
    model = loaded.model
    checked_layers(model, loaded.adapter, [layer])
    neurons = loaded.adapter.neuron_count(model)
    if not 0 <= neuron < neurons:
        raise UserError(f"neuron {neuron} out of range: layers have neurons 0..{neurons - 1}")
    column = weight_matrix(loaded.adapter.neuron_module(loaded.adapter.decoder_layers(model)[layer]))[:, neuron]
    norm = _final_norm(model)
    scale = getattr(norm, "weight", None)
    direction = column.float() * scale.float() if isinstance(scale, torch.Tensor) else column.float()
    project_out = getattr(getattr(getattr(model, "model", None), "decoder", None), "project_out", None)
    if project_out is not None:
        direction = weight_matrix(project_out).float() @ direction
    unembedding = model.get_output_embeddings().weight.float()  # [vocab, hidden]
    return unembedding @ direction


def logit_effects(loaded: LoadedModel, layer: int, neuron: int, k: int = 10) -> dict:
    """The ``k`` tokens the neuron's output promotes most and suppresses most (values in logits
    per unit activation)."""
    if not 1 <= k <= 100:
        raise UserError("k must be between 1 and 100")
    values = logit_direction(loaded, layer, neuron).cpu()
    top, bottom = values.topk(k), values.topk(k, largest=False)

    def listed(result) -> list[dict]:
        return [{"token": loaded.tokenizer.decode([int(i)]), "token_id": int(i), "value": float(v)}
                for v, i in zip(result.values, result.indices, strict=True)]

    return {"promoted": listed(top), "suppressed": listed(bottom)}


@torch.inference_mode()
def _text_activations(loaded: LoadedModel, layer: int, neuron: int, input_ids: list[int]) -> list[float]:
    captured: dict[str, torch.Tensor] = {}

    def keep(neurons: torch.Tensor) -> None:  # [1, tokens, neurons]
        captured["a"] = neurons[0, :, neuron].float().cpu()

    with neuron_hooks(loaded.model, loaded.adapter, {layer: keep}):
        loaded.model(input_ids=torch.tensor([input_ids], device=loaded.device), use_cache=False)
    return captured["a"][1:].tolist()  # the start token is never shown


def test_text(dense: LoadedModel, layer: int, neuron: int, text: str,
              variant: LoadedModel | str | None = None) -> dict:
    """The neuron's activation on each token of ``text``, dense and (optionally) under a variant
    (a loaded variant model, or a variant id applied to ``dense`` for the call)."""
    from backend.data.encoding import encode_for_attribution
    from backend.pruning.variants import variant_applied

    checked_layers(dense.model, dense.adapter, [layer])
    neurons = dense.adapter.neuron_count(dense.model)
    if not 0 <= neuron < neurons:
        raise UserError(f"neuron {neuron} out of range: layers have neurons 0..{neurons - 1}")
    encoded = encode_for_attribution(dense.tokenizer, text, dense.max_length)
    result: dict = {"tokens": encoded.tokens[1:], "token_ids": encoded.input_ids[1:],
                    "dense": _text_activations(dense, layer, neuron, encoded.input_ids), "variant": None}
    if variant is not None:
        context = variant_applied(dense, variant) if isinstance(variant, str) else nullcontext(variant)
        with context as model:
            result["variant"] = _text_activations(model, layer, neuron, encoded.input_ids)
    return result


test_text.__test__ = False  # type: ignore[attr-defined]  # a product function, not a pytest test
