"""The model card (README.md) written next to an exported checkpoint.

It says what the checkpoint is (base model, method, calibration, requested and achieved
sparsity), how it was stored, and the accuracies the results store holds for this variant and
for its dense base, each with lm-eval's standard error, so a reader sees what pruning cost.
"""

from __future__ import annotations

from backend.evaluation.store import DENSE, StoredResult


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _accuracy_rows(variant_results: list[StoredResult], dense_results: list[StoredResult]) -> list[str]:
    """One row per task: variant accuracy ± stderr, dense accuracy ± stderr, examples."""
    from backend.evaluation.tables import latest_results

    dense_by_task = {result.key.task: result for result in latest_results(dense_results)}
    rows = []
    for result in sorted(latest_results(variant_results), key=lambda item: item.key.task):
        accuracy, stderr = result.metric(), result.stderr()
        if accuracy is None:
            continue
        dense = dense_by_task.get(result.key.task)
        dense_text = "–"
        if dense is not None and dense.metric() is not None:
            dense_text = f"{_percent(dense.metric())} ± {_percent(dense.stderr())}"
        rows.append(f"| {result.key.task} | {_percent(accuracy)} ± {_percent(stderr)} | {dense_text} "
                    f"| {result.n_examples} |")
    return rows


def stored_results(manifest: dict, settings=None) -> tuple[list[StoredResult], list[StoredResult]]:
    """(this variant's results, its dense base's results) from the results store; empty when none."""
    from backend.evaluation.store import ResultsStore

    store = ResultsStore.from_settings(settings)
    base = manifest.get("base_model")
    return (store.results(base_model=base, variant_id=manifest["id"]),
            store.results(base_model=base, variant_id=DENSE))


def model_card(manifest: dict, export_format: str, *, variant_results: list[StoredResult],
               dense_results: list[StoredResult], structured_note: str | None = None) -> str:
    """Markdown text of the card; every number comes from the manifest or the results store."""
    achieved = (manifest.get("achieved_sparsity") or {}).get("overall")
    spec = manifest.get("spec") or {}
    target = None
    if spec.get("kind") == "nm" and spec.get("m"):
        target = 1 - spec["n"] / spec["m"]
    elif spec.get("kind") in ("unstructured", "neurons"):
        target = spec.get("ratio")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [pruned, prunelens]",
        "---",
        "",
        f"# {manifest['id']}",
        "",
        (f"`{manifest.get('base_model')}` pruned with **{manifest.get('method')}** by PruneLens "
        f"({export_format} format)."),
        "",
        "## Configuration",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model | `{manifest.get('base_model')}` |",
        f"| method | {manifest.get('method')} |",
        f"| sparsity (requested) | {manifest.get('sparsity')}"
        + (f" ({_percent(target)} of weights)" if target is not None and spec.get("kind") != "neurons" else "")
        + " |",
        f"| sparsity (achieved, prunable linears) | {_percent(achieved)} |",
        f"| calibration set | {manifest.get('calibration')} |",
        f"| calibration windows × tokens | {manifest.get('nsamples')} × {manifest.get('seqlen')} |",
        f"| seed | {manifest.get('seed')} |",
        f"| options | `{manifest.get('options')}` |",
        f"| created | {manifest.get('created_at')} |",
        "",
        ("Embeddings, norms and the output head are not pruned; N:M means N weights kept in every M "
        "consecutive inputs."),
        "",
    ]
    if structured_note:
        lines += [structured_note, ""]
    lines += ["## Stored accuracies", ""]
    rows = _accuracy_rows(variant_results, dense_results)
    if rows:
        lines += [
            ("Accuracy ± lm-eval's standard error on the examples evaluated; the dense base model "
            "on the same task is what pruning is measured against."),
            "",
            "| task | this variant | dense base | examples |",
            "|---|---|---|---|",
            *rows,
        ]
    else:
        lines.append("No evaluation of this variant is stored yet (`prunelens evaluate`).")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")',
        "```",
        "",
    ]
    return "\n".join(lines)
