"""NSA step 1's fallback attribution: how much each probe token moves the label margin.

Two methods, one contract (``[tokens]`` attribution of ``margin = log p(label) - log p(other)``
after the task's probe, see ``probe.py``):

- ``integrated_gradients`` (default): Captum's ``IntegratedGradients`` on the input embeddings.
  The baseline is the same probe with every token of the user's text replaced by one neutral
  token (the tokenizer's pad token, else its eos token; the zero vector if it has neither),
  while the question around the text keeps its own tokens; so only text tokens get
  attribution, and by completeness they sum to ``margin(text) - margin(baseline)`` up to
  Captum's reported convergence delta (Gauss-Legendre quadrature with ``n_steps`` points).
- ``gradient_x_input``: one gradient, ``grad_e(margin) · e`` per input embedding ``e`` (a
  first-order Taylor term, no baseline, no completeness). The method before Captum; kept
  selectable so that benches can compare the two on the same texts.

Gradients are taken with ``torch.autograd.grad`` (Captum does the same), so the shared model's
parameters never accumulate ``.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from backend.errors import UserError
from backend.nsa.probe import ProbeEncoding, label_log_probs, margin

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

FALLBACK_METHODS = ("integrated_gradients", "gradient_x_input")
FALLBACK_METHOD = "integrated_gradients"
# Gauss-Legendre points. On the embedded model the margin along the straight path from the
# baseline to the text is smooth but oscillates (total variation ~6.5 nats for a net change of
# 0.02 to 0.6 nats on the texts measured), so its derivative is large and 32 points under-sample
# it: Captum's convergence delta was 3.5 and 24 times the margin change on two texts at 32
# points; on the first, 4 % of it at 128 and < 0.1 % at 512 (docs/nsa.md, "Word quality").
# 128 is a cost/accuracy compromise (4x the CPU time of 32), not a guarantee: the delta stays
# recorded per text.
IG_STEPS = 128
IG_BATCH = 16  # interpolation points per forward pass (memory bound on a CPU)


@dataclass
class TokenAttribution:
    """One attribution run over a probe prompt."""

    method: str
    values: torch.Tensor  # [tokens] float32 on CPU, signed: > 0 pushes towards the label
    label_index: int  # the label whose margin was explained
    margin: float  # margin(probe) in nats
    baseline_margin: float | None = None  # integrated gradients: margin(baseline probe)
    convergence_delta: float | None = None  # integrated gradients: sum(values) - (margin - baseline_margin)

    def describe(self) -> str:
        """One line for the result's note: the method and, for integrated gradients, its checks."""
        if self.baseline_margin is None:
            return self.method
        return (f"{self.method} (margin {self.margin:.3f} nats, baseline {self.baseline_margin:.3f}, "
                f"convergence delta {self.convergence_delta:.1e})")


def fallback_word_count(candidates: int) -> int:
    """How many words the fallback keeps: a quarter of the content words, 1 to 5."""
    return max(1, min(5, round(0.25 * candidates)))


def baseline_token_id(tokenizer) -> int | None:
    """The neutral token that replaces the text in the integrated-gradients baseline."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def text_token_indices(probe: ProbeEncoding, text_length: int) -> list[int]:
    """Probe tokens overlapping the user's text (characters ``[text_start, text_start + text_length)``)."""
    start, end = probe.text_start, probe.text_start + text_length
    return [i for i, (t_start, t_end) in enumerate(probe.encoded.offsets) if t_start < end and t_end > start]


def token_attribution(loaded: LoadedModel, probe: ProbeEncoding, text_length: int,
                      label_index: int | None = None, *, method: str = FALLBACK_METHOD,
                      n_steps: int = IG_STEPS) -> TokenAttribution:
    """Attribution of the label margin to each probe token (``text_length``: characters of the text).

    Without ``label_index`` the model's own prediction on the probe is explained.
    """
    if method not in FALLBACK_METHODS:
        raise UserError(f"unknown fallback attribution {method!r}: use one of {', '.join(FALLBACK_METHODS)}")
    model = loaded.model
    ids = torch.tensor([probe.input_ids], device=loaded.device)  # [1, tokens]
    with torch.inference_mode(False), torch.enable_grad():
        embeds = model.get_input_embeddings()(ids).detach()  # [1, tokens, hidden]
        with torch.no_grad():
            log_probs = label_log_probs(model, probe, embeds=embeds)[0]  # [2]
        if label_index is None:
            label_index = int(torch.argmax(log_probs).item())
        full_margin = float(margin(log_probs, label_index))
        if method == "gradient_x_input":
            return _gradient_x_input(model, probe, embeds, label_index, full_margin)
        baseline = _baseline_embeds(loaded, probe, embeds, text_length)  # [1, tokens, hidden]
        return _integrated_gradients(model, probe, embeds, baseline, label_index, full_margin, n_steps)


def _margin_function(model, probe: ProbeEncoding, label_index: int):
    """``embeds [batch, tokens, hidden] -> margin [batch]``: the forward function Captum calls."""
    return lambda embeds: margin(label_log_probs(model, probe, embeds=embeds), label_index)


def _gradient_x_input(model, probe: ProbeEncoding, embeds: torch.Tensor, label_index: int,
                      full_margin: float) -> TokenAttribution:
    leaf = embeds.clone().requires_grad_(True)  # [1, tokens, hidden]
    (gradient,) = torch.autograd.grad(_margin_function(model, probe, label_index)(leaf).sum(), leaf)
    values = (gradient * embeds).sum(-1)[0].float().cpu()  # [tokens]
    return TokenAttribution("gradient_x_input", values, label_index, full_margin)


def _baseline_embeds(loaded: LoadedModel, probe: ProbeEncoding, embeds: torch.Tensor,
                     text_length: int) -> torch.Tensor:
    """``[1, tokens, hidden]``: the probe's embeddings with the text's tokens replaced by the neutral token."""
    baseline = embeds.clone()
    text_tokens = text_token_indices(probe, text_length)
    token_id = baseline_token_id(loaded.tokenizer)
    if token_id is None:
        baseline[0, text_tokens] = 0.0
    else:
        neutral = loaded.model.get_input_embeddings()(torch.tensor([token_id], device=embeds.device))  # [1, hidden]
        baseline[0, text_tokens] = neutral.detach().to(baseline.dtype)
    return baseline


def _integrated_gradients(model, probe: ProbeEncoding, embeds: torch.Tensor, baseline: torch.Tensor,
                          label_index: int, full_margin: float, n_steps: int) -> TokenAttribution:
    from captum.attr import IntegratedGradients  # imported here: only the fallback needs Captum

    forward = _margin_function(model, probe, label_index)
    attributions, delta = IntegratedGradients(forward).attribute(
        embeds, baselines=baseline, n_steps=n_steps, method="gausslegendre",
        internal_batch_size=IG_BATCH, return_convergence_delta=True,
    )  # [1, tokens, hidden], [1]
    with torch.no_grad():
        baseline_margin = float(forward(baseline)[0])
    values = attributions.sum(-1)[0].float().cpu()  # [tokens]
    return TokenAttribution("integrated_gradients", values, label_index, full_margin,
                            baseline_margin=baseline_margin, convergence_delta=float(delta[0]))
