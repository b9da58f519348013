"""Statistics and the plain-English verdict of the causal checks (patching, ablation).

Inputs are per-example label margins (nats, label minus the other label) of condition rows.
Aggregates are ratios of sums over examples (stable where single examples lost almost nothing),
intervals are seeded percentile bootstraps over examples (``scipy.stats.bootstrap``), and the
comparison with chance is an empirical p-value against the matched-random draws
(``matched_null.percentile_and_p_value``). The reading never claims more than these say.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from backend.nsa.matched_null import percentile_and_p_value

CONFIDENCE = 0.95
RESAMPLES = 2000
SIGNIFICANCE = 0.05


def interval(samples: tuple[np.ndarray, ...], statistic: Callable, seed: int) -> list[float] | None:
    """95% percentile bootstrap interval of ``statistic(*samples, axis)`` over paired examples
    (None with fewer than two examples); a sample without spread gives ``[value, value]``."""
    if len(samples[0]) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "degenerate" data: every resample gives one value
        result = stats.bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=RESAMPLES,
                                 confidence_level=CONFIDENCE, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.isnan(low) or np.isnan(high):
        value = float(statistic(*samples, axis=-1))
        return [value, value]
    return [low, high]


def _mean(values, axis=-1):
    return np.mean(values, axis=axis)


def _ratio_of_sums(gain, loss, axis=-1):
    return np.sum(gain, axis=axis) / np.sum(loss, axis=axis)


def accuracy(correct: np.ndarray, seed: int) -> dict:
    """Share correct (``[examples]`` 0/1, or a per-example share over draws) with its interval."""
    correct = np.asarray(correct, dtype=float)
    return {"value": float(correct.mean()), "interval": interval((correct,), _mean, seed)}


def recovery_summary(dense: np.ndarray, variant: np.ndarray, selected: np.ndarray, all_layers: np.ndarray,
                     draws: np.ndarray, *, seed: int = 0) -> dict:
    """Patching in one variant. Margins ``[examples]`` (``draws``: ``[examples, draws]``).

    recovery = sum(m_patched - m_variant) / sum(m_dense - m_variant) over the examples where the
    variant lost margin (m_dense > m_variant); per-example recoveries are reported too.
    """
    loss = dense - variant
    lost = loss > 0
    result = {
        "examples": len(dense),
        "examples_lost_margin": int(lost.sum()),
        "mean_margin": {"dense": float(dense.mean()), "variant": float(variant.mean()),
                        "patched": float(selected.mean()), "all_layers": float(all_layers.mean()),
                        "random": float(draws.mean())},
        "per_example_recovery": [float((s - v) / d) if d > 0 else None
                                 for s, v, d in zip(selected, variant, loss, strict=True)],
        "accuracy": {
            "dense": accuracy(dense > 0, seed),
            "variant": accuracy(variant > 0, seed),
            "patched": accuracy(selected > 0, seed),
            "all_layers": accuracy(all_layers > 0, seed),
            "random": accuracy((draws > 0).mean(axis=1), seed),
        },
    }
    if not lost.any():
        result.update(recovery=None, all_layers=None, random=None, difference=None, p_value=None,
                      null_percentile=None, null_draw_recovery=[])
        return result
    loss_l, variant_l = loss[lost], variant[lost]
    gain = {"selected": selected[lost] - variant_l, "all_layers": all_layers[lost] - variant_l,
            "random": draws[lost].mean(axis=1) - variant_l}

    def block(name: str) -> dict:
        return {"value": float(_ratio_of_sums(gain[name], loss_l)),
                "interval": interval((gain[name], loss_l), _ratio_of_sums, seed)}

    per_draw = (draws[lost] - variant_l[:, None]).sum(axis=0) / loss_l.sum()  # [draws]
    observed = float(_ratio_of_sums(gain["selected"], loss_l))
    percentile, p_value = percentile_and_p_value(observed, torch.from_numpy(per_draw))

    def difference(sel, rand, loss_, axis=-1):
        return (np.sum(sel, axis=axis) - np.sum(rand, axis=axis)) / np.sum(loss_, axis=axis)

    result.update(
        recovery=block("selected"), all_layers=block("all_layers"), random=block("random"),
        difference={"value": observed - float(_ratio_of_sums(gain["random"], loss_l)),
                    "interval": interval((gain["selected"], gain["random"], loss_l), difference, seed)},
        p_value=p_value, null_percentile=percentile, null_draw_recovery=per_draw.tolist(),
    )
    return result


def ablation_summary(intact: np.ndarray, ablated: np.ndarray, draws: np.ndarray, *, seed: int = 0) -> dict:
    """Zeroing in the dense model. Margins ``[examples]`` (``draws``: ``[examples, draws]``);
    effect = m_intact - m_ablated (positive: the neurons supported the label)."""
    effect = intact - ablated
    random_effect = intact[:, None] - draws  # [examples, draws]
    null = random_effect.mean(axis=0)  # [draws]: one mean effect per random set
    percentile, p_value = percentile_and_p_value(float(effect.mean()), torch.from_numpy(null))
    return {
        "examples": len(intact),
        "effect": {"value": float(effect.mean()), "interval": interval((effect,), _mean, seed)},
        "random_effect": {"value": float(null.mean()), "interval": interval((random_effect.mean(axis=1),), _mean, seed),
                          "null_range": [float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))]},
        "p_value": p_value,
        "null_percentile": percentile,
        "null_draw_effect": null.tolist(),
        "accuracy": {"intact": accuracy(intact > 0, seed), "ablated": accuracy(ablated > 0, seed),
                     "random": accuracy((draws > 0).mean(axis=1), seed)},
    }


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _pct_interval(block: dict) -> str:
    text = _pct(block["value"])
    if block.get("interval"):
        low, high = block["interval"]
        text += f" [{_pct(low)}, {_pct(high)}]"
    return text


def patching_reading(summary: dict, neurons: int) -> str:
    """One sentence: how much of the lost margin these neurons give back, against chance."""
    if summary["recovery"] is None:
        return (f"The variant lost no margin on these {summary['examples']} examples: "
                "there is nothing for patching to recover.")
    lost = summary["examples_lost_margin"]
    sentence = (f"Patching these {neurons} neurons recovers {_pct_interval(summary['recovery'])} of the margin "
                f"the variant lost on {lost} of {summary['examples']} examples; matched random neurons recover "
                f"{_pct_interval(summary['random'])}")
    difference = summary["difference"]["interval"]
    beats = summary["p_value"] <= SIGNIFICANCE and difference is not None and difference[0] > 0
    if beats:
        return sentence + f": more than random neurons (p = {summary['p_value']:.3f})."
    if summary["p_value"] <= SIGNIFICANCE:  # above most draws, yet the paired interval includes 0
        return sentence + f": not clearly more than random neurons (p = {summary['p_value']:.3f})."
    return sentence + f": not distinguishable from random neurons (p = {summary['p_value']:.2f})."


def ablation_reading(summary: dict, neurons: int) -> str:
    """One sentence: what zeroing these neurons in the dense model does, against chance."""
    effect, null = summary["effect"], summary["random_effect"]
    interval_text = ""
    if effect["interval"]:
        interval_text = f" [{-effect['interval'][1]:+.3f}, {-effect['interval'][0]:+.3f}]"
    sentence = (f"Zeroing these {neurons} neurons in the dense model changes the label margin by "
                f"{-effect['value']:+.3f}{interval_text} nats; matched random sets change it by {-null['value']:+.3f}")
    lowers = effect["interval"] is not None and effect["interval"][0] > 0
    if summary["p_value"] <= SIGNIFICANCE and lowers:
        return sentence + f": a larger drop than random sets (p = {summary['p_value']:.3f})."
    if summary["p_value"] <= SIGNIFICANCE:  # beyond the null, but not as a drop
        return sentence + f": no larger drop than random sets (p = {summary['p_value']:.3f})."
    return sentence + f": not distinguishable from random sets (p = {summary['p_value']:.2f})."


def verdict_lines(causal: dict) -> list[str]:
    """The readings of a causal check, one line each: every variant's patching, then the ablation."""
    lines = [f"variant {block['variant']}: {block['reading']}" for block in causal.get("patching", [])]
    if causal.get("ablation"):
        lines.append(f"ablation: {causal['ablation']['reading']}")
    return lines


def verdict_rows(causal: dict) -> list[dict]:
    """Flat rows (one per variant, then one for the ablation) for a CSV export of the verdict."""

    def bounds(block: dict | None) -> tuple:
        if not block:
            return None, None, None
        low, high = block["interval"] or (None, None)
        return block["value"], low, high

    rows = []
    for block in causal.get("patching", []):
        value, low, high = bounds(block["recovery"])
        rand, rand_low, rand_high = bounds(block["random"])
        rows.append({"check": "patching", "variant": block["variant"], "examples": block["examples"],
                     "examples_lost_margin": block["examples_lost_margin"], "value": value, "low": low,
                     "high": high, "random": rand, "random_low": rand_low, "random_high": rand_high,
                     "p_value": block["p_value"], "reading": block["reading"]})
    ablation = causal.get("ablation")
    if ablation:
        value, low, high = bounds(ablation["effect"])
        rand, rand_low, rand_high = bounds(ablation["random_effect"])
        rows.append({"check": "ablation", "variant": "", "examples": ablation["examples"],
                     "examples_lost_margin": None, "value": value, "low": low, "high": high, "random": rand,
                     "random_low": rand_low, "random_high": rand_high, "p_value": ablation["p_value"],
                     "reading": ablation["reading"]})
    return rows
