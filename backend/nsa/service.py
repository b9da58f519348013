"""Neuron Semantic Attribution end to end: the one function the CLI and the API both call.

``attribute`` runs step 1 (influential words), step 2 (one streamed dense pass per text),
step 3 (one pass per text and variant, the variant swapped into the loaded model in place)
and, if asked, the ablation check; then the statistics (cross-fitted selection, bootstrap
intervals, matched null, specificity: ``backend.nsa.stats``) and the versioned result
(``assemble.build_result``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from backend.data.encoding import encode_for_attribution
from backend.errors import UserError
from backend.nsa.assemble import TextRecord, VariantRecord, build_result, variant_info
from backend.nsa.causal import (
    CAUSAL_DRAWS,
    causal_on_records,
    check_patch_request,
    in_sample_ablation,
)
from backend.nsa.compare import (
    TextObservation,
    assemble_observation,
    neuron_weight_slices,
    weights_removed,
)
from backend.nsa.influential import find_word_spans, influential_words
from backend.nsa.options import NsaOptions, nsa_options
from backend.nsa.probe import encode_probe
from backend.nsa.scoring import (
    NEGLIGIBLE_FRACTION,
    Selection,
    TextScores,
    activation_magnitude,
    observe_text,
    score_text,
    select_neurons,
)
from backend.nsa.stats import (
    StatsOptions,
    make_plan,
    specificity,
    variant_statistics,
)
from backend.nsa.sums import StateSums, observe_with_sums
from backend.nsa.tasks import get_task
from backend.nsa.word_check import occlusion_check

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

Progress = Callable[[float, str], None]


def dataset_examples(name: str, n: int, seed: int = 0) -> list[dict]:
    """Labelled examples ``{"text", "label", "label_text"}`` from a named dataset (e.g. sst2)."""
    if n < 1:
        raise UserError("--n must be at least 1")
    try:
        from backend.data.sources import labelled_examples
    except ImportError as exc:
        raise UserError("labelled datasets are not available in this installation (backend.data.sources)") from exc
    return labelled_examples(name, n, seed)


def _normalise_texts(texts) -> list[dict]:
    if isinstance(texts, (str, dict)):
        texts = [texts]
    rows = []
    for item in texts or []:
        row = {"text": item} if isinstance(item, str) else dict(item)
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise UserError("empty text")
        rows.append(row)
    if not rows:
        raise UserError("no text given")
    return rows


def _normalise_words(words, rows: list[dict]) -> list[list[str] | None]:
    """None, one list for every text, or one list per text -> one (optional) list per text.

    Without ``words``, each text's own ``"words"`` (from a .jsonl line) are used.
    """
    count = len(rows)
    if words is None:
        own = [row.get("words") for row in rows]
        for i, group in enumerate(own):
            if group is not None and not (isinstance(group, list) and all(isinstance(w, str) for w in group)):
                raise UserError(f"text {i}: \"words\" must be a list of strings")
        return [[w.strip() for w in group if w.strip()] or None if group else None for group in own]
    if isinstance(words, str):
        words = [w for w in words.split(",")]
    if all(isinstance(w, str) for w in words):
        cleaned = [w.strip() for w in words if w.strip()]
        if not cleaned:
            raise UserError("--words is empty")
        return [cleaned] * count
    if len(words) != count:
        raise UserError(f"{len(words)} word lists for {count} texts")
    return [[w.strip() for w in group if w.strip()] or None for group in words]


def _manifests(loaded: LoadedModel, variant_ids: Sequence[str], settings) -> list[dict]:
    """Validate variant ids up front, before any slow work (NotFoundError when unknown)."""
    if not variant_ids:
        return []
    from backend.pruning.variants import read_manifest, validate_variant_id

    manifests = []
    for vid in dict.fromkeys(variant_ids):
        manifest = read_manifest(validate_variant_id(vid), settings)
        if manifest.get("base_model") not in (None, loaded.name):
            raise UserError(f"variant {vid!r} was pruned from {manifest['base_model']!r}, not {loaded.name!r}")
        manifests.append({**manifest, "id": vid})
    return manifests


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)


def _dense_observation(loaded: LoadedModel, record: TextRecord, scores: TextScores, selection: Selection,
                       mode: str) -> TextObservation:
    """Reuse the scoring pass's kept columns when they hold every selected neuron, else re-run."""
    by_layer = selection.indices_by_layer()
    per_layer = {}
    for layer, indices in by_layer.items():
        kept = scores.layers[layer]
        where = {int(c): pos for pos, c in enumerate(kept.candidates.tolist())}
        if not all(i in where for i in indices):
            per_layer = observe_text(loaded, record.encoded.input_ids, by_layer, record.word_tokens, mode)
            break
        columns = kept.candidate_activations[:, [where[i] for i in indices]]  # [tokens, n_layer]
        per_layer[layer] = (columns, kept.mass)
    return assemble_observation(selection, per_layer)


def attribute(
    loaded: LoadedModel,
    texts,
    *,
    words=None,
    variants: Sequence[str] = (),
    options: NsaOptions | None = None,
    explainer: LoadedModel | None = None,
    negligible_fraction: float = NEGLIGIBLE_FRACTION,
    causal_draws: int = CAUSAL_DRAWS,
    progress: Progress | None = None,
    settings=None,
    word_check: bool = True,
    **option_values: Any,
) -> dict:
    """Run NSA on ``texts`` (strings, or dicts with "text" and optionally "label_text").

    ``words``: influential words given by the user (one list for all texts, or one per
    text) instead of asking the model. ``variants``: ids of pruned variants of ``loaded``.
    ``patch``: the cross-fitted causal check (``backend.nsa.causal``) patches the selected
    neurons in every variant (needs a gold label per text); ``ablate`` with two texts or more
    adds its dense ablation against the matched null. ``explainer``: another LoadedModel that
    answers step 1. ``options`` (``backend.nsa.options.NsaOptions``: task, top_k, ablate,
    patch, split, activation, max_new_tokens, null_draws, resamples, seed), or its fields as
    keywords (applied over ``options``; checked, UserError). Returns the result dict
    described by ``backend.nsa.schema.NsaResult``. ``settings``: where variants live
    (default: the environment's settings). ``split``: cross-fitted held-out figures (>= 4
    texts); ``null_draws``: matched-null sets (and specificity permutations); ``resamples``:
    bootstrap resamples for the intervals; all three off = the bare drops, as before.
    ``word_check``: the step-1 occlusion check of every word.
    """
    started = time.perf_counter()
    chosen = nsa_options(options, **option_values)
    top_k, ablate, patch, split, activation = chosen.top_k, chosen.ablate, chosen.patch, chosen.split, chosen.activation
    max_new_tokens, null_draws = chosen.max_new_tokens, chosen.null_draws
    resamples, seed = chosen.resamples, chosen.seed
    spec = get_task(chosen.task)
    rows = _normalise_texts(texts)
    word_lists = _normalise_words(words, rows)
    stats_options = StatsOptions(split=split, null_draws=null_draws, resamples=resamples, seed=seed)
    manifests = _manifests(loaded, variants, settings)
    statistics_on = bool(manifests) and bool(split or null_draws or resamples)  # figures of variants only
    if patch:
        check_patch_request(rows, spec, manifests)
    run_causal = patch or (ablate and len(rows) >= 2)
    overall = progress
    if run_causal and overall is not None:
        report_overall: Progress = overall

        # The causal check is most of the work: steps 1-3 report in the first half.
        def progress(fraction: float, message: str) -> None:
            report_overall(0.5 * fraction, message)
    layer_count = len(loaded.adapter.decoder_layers(loaded.model))
    neuron_count = loaded.adapter.neuron_count(loaded.model)
    if not 1 <= top_k <= layer_count * neuron_count:
        raise UserError(f"--top-k must be between 1 and {layer_count * neuron_count}")
    warnings: list[str] = []
    timings: dict[str, float] = {}

    encoded = [encode_for_attribution(loaded.tokenizer, row["text"], loaded.max_length) for row in rows]
    for i, enc in enumerate(encoded):
        if enc.truncated:
            warnings.append(f"text {i} truncated to the model's context of {loaded.max_length} tokens; "
                            "words beyond it are ignored")
    given = [(enc.text, w) for enc, group in zip(encoded, word_lists, strict=True) for w in group or []]
    if given and not any(find_word_spans(text, word) for text, word in given):
        raise UserError("none of the given words occur in the text")

    # Step 1 ---------------------------------------------------------------------------------
    clock = time.perf_counter()
    records = []
    for i, (row, enc, user_words) in enumerate(zip(rows, encoded, word_lists, strict=True)):
        _report(progress, 0.3 * i / len(rows), f"influential words of text {i + 1}/{len(rows)}")
        label = row.get("label_text")
        found = influential_words(loaded, enc, spec, user_words=user_words, explainer=explainer,
                                  max_new_tokens=max_new_tokens, label_index=spec.label_index(label))
        if found.missing:
            warnings.append(f"text {i}: not in the text, ignored: {', '.join(found.missing)}")
        if found.source.startswith("fallback"):
            warnings.append(f"text {i}: {found.note}")
        checks = occlusion_check(loaded, enc.text, found.words, spec, spec.label_index(label)) if word_check else None
        records.append(TextRecord(enc, found, label=None if label is None else str(label), word_checks=checks))
    timings["step1_words"] = time.perf_counter() - clock

    # Step 2 ---------------------------------------------------------------------------------
    clock = time.perf_counter()
    text_scores = []
    for i, record in enumerate(records):
        _report(progress, 0.3 + 0.2 * i / len(records), f"scoring neurons on text {i + 1}/{len(records)}")
        scores = score_text(loaded, record.encoded.input_ids, record.influential_mask, record.scored,
                            record.word_tokens, keep=top_k, mode=activation,
                            negligible_fraction=negligible_fraction, with_sums=statistics_on)
        record.eligible_neurons = sum(layer.eligible for layer in scores.layers.values())
        text_scores.append(scores)
    selection = select_neurons([s.scores() for s in text_scores], top_k)
    dense = [_dense_observation(loaded, record, scores, selection, activation)
             for record, scores in zip(records, text_scores, strict=True)]
    timings["step2_scoring"] = time.perf_counter() - clock
    clock = time.perf_counter()
    plan, dense_sums, neuron_specificity = None, None, None
    if statistics_on:
        dense_sums = [_state_sums(scores.layers, layer_count, neuron_count, record)
                      for scores, record in zip(text_scores, records, strict=True)]
        plan = make_plan(dense_sums, [s.scores() for s in text_scores], selection, top_k, stats_options)
    if null_draws:
        neuron_specificity = specificity(
            [activation_magnitude(obs.activations, activation) for obs in dense],
            [r.influential_mask for r in records], [r.scored for r in records],
            torch.tensor([n.text_scores for n in selection.neurons]).T > 0, draws=null_draws, seed=seed)
    timings["statistics"] = time.perf_counter() - clock

    # Step 3 ---------------------------------------------------------------------------------
    clock = time.perf_counter()
    variant_records = []
    if manifests:
        from backend.pruning.variants import variant_applied

        dense_slices = neuron_weight_slices(loaded, selection)
        by_layer = selection.indices_by_layer()
        for v, manifest in enumerate(manifests):
            _report(progress, 0.5 + 0.3 * v / len(manifests), f"variant {manifest['id']}")
            with variant_applied(loaded, manifest["id"], settings):
                if plan is None:
                    observations = [
                        assemble_observation(selection, observe_text(loaded, record.encoded.input_ids, by_layer,
                                                                     record.word_tokens, activation))
                        for record in records
                    ]
                else:
                    observations, variant_sums = [], []
                    for record in records:
                        observed, sums = observe_with_sums(
                            loaded, record.encoded.input_ids, by_layer, plan.layers(neuron_count),
                            record.influential_mask, record.scored, record.word_tokens, activation)
                        observations.append(assemble_observation(selection, observed))
                        variant_sums.append(_state_sums(sums, layer_count, neuron_count, record))
                removed = weights_removed(dense_slices, neuron_weight_slices(loaded, selection))
            stats_clock = time.perf_counter()
            statistics = None if plan is None or dense_sums is None else variant_statistics(
                plan, dense_sums, variant_sums, [[w.word for w in r.influential.words] for r in records], stats_options)
            timings["statistics"] += time.perf_counter() - stats_clock
            variant_records.append(VariantRecord(variant_info(manifest), observations, removed, statistics))
    timings["step3_variants"] = time.perf_counter() - clock

    # One text: nothing can be held out, so its ablation is in-sample (labelled so, matched null);
    # two or more: only the cross-fitted ablation of the causal check below.
    ablation = None
    if ablate and not run_causal:
        clock = time.perf_counter()
        _report(progress, 0.85, "ablation check (in-sample: one text)")
        width = loaded.adapter.neuron_count(loaded.model)
        selected = torch.tensor([n.layer * width + n.index for n in selection.neurons], dtype=torch.long)
        record = records[0]
        ablation = in_sample_ablation(
            loaded.model, loaded.adapter, encode_probe(loaded.tokenizer, record.encoded.text, spec, loaded.max_length),
            spec.label_index(record.label), selected, draws=causal_draws, seed=seed)
        timings["ablation"] = time.perf_counter() - clock

    causal = None
    if run_causal:
        clock = time.perf_counter()
        causal = causal_on_records(loaded, spec, records, [s.scores() for s in text_scores],
                                   manifests if patch else [], top_k=top_k, ablate=ablate, draws=causal_draws,
                                   seed=seed, settings=settings,
                                   progress=lambda f, m: _report(overall, 0.5 + 0.5 * f, m))
        timings["causal"] = time.perf_counter() - clock

    timings["total"] = time.perf_counter() - started
    reported_settings = {
        "top_k": top_k,
        "activation": activation,
        "negligible_fraction": negligible_fraction,
        "aggregation": "mean over texts of per-text scores (negligible = 0)",
        "max_new_tokens": max_new_tokens,
        "explainer": getattr(explainer, "name", None),
        "long_texts": "truncated to the model's context",
        "split": split,
        "null_draws": null_draws,
        "bootstrap_resamples": resamples,
        "word_check": word_check,
    }
    statistics_settings = None if plan is None else {
        "confidence": stats_options.confidence, "seed": seed,
        "interval": "BCa bootstrap over texts (scipy.stats.bootstrap)",
        "null": f"{null_draws} random neuron sets, same layers and {stats_options.level_bins} per-layer level bins",
        "folds": [fold.select_on for fold in plan.folds] or None, "held_out_note": plan.held_out_note,
    }
    model_info = {"name": loaded.name, "family": loaded.adapter.family, "layers": layer_count,
                  "neurons_per_layer": neuron_count}
    result = build_result(model=model_info, task=spec, settings=reported_settings, texts=records, selection=selection,
                          dense=dense, variants=variant_records, ablation=ablation, warnings=warnings,
                          timings=timings, specificity=neuron_specificity, statistics=statistics_settings,
                          causal=causal)
    _report(overall, 1.0, "done")
    return result


def _state_sums(per_layer: dict, layer_count: int, neuron_count: int, record: TextRecord) -> StateSums:
    """``{layer: LayerScores or LayerSums}`` of one text -> its ``StateSums``."""
    sums = {layer: getattr(item, "sums", item) for layer, item in per_layer.items()}
    return StateSums.from_layers(sums, layer_count, neuron_count, len(record.word_tokens))


@torch.inference_mode()
def plain_forward(loaded: LoadedModel, text: str) -> None:
    """One forward pass without any hook: the unit NSA's cost is measured against (bench)."""
    enc = encode_for_attribution(loaded.tokenizer, text, loaded.max_length)
    loaded.model(input_ids=torch.tensor([enc.input_ids], device=loaded.device), use_cache=False)
