"""The causal verdict of an NSA result (patching per variant, ablation) as cards, CSV, and a dataset job.

The backend computes every number and reading (``result["causal"]``); this module only lays them
out: one card per variant with recovery vs matched-random neurons, the accuracies with their
intervals, the variant's held-out excess drop with its interval and verdict (the NSA statistics,
``comparison[].statistics.held_out``), the ablation effect vs its null, and the backend's one-line
reading.
"""

from __future__ import annotations

import csv
import io

import streamlit as st

from frontend.views.nsa_stats import interval_text

DATASETS = ("sst2", "imdb", "rte", "boolq")
REFRESH_S = 2.0
JOB_KEY = "verdict_job"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _with_interval(block: dict | None, percent: bool = True) -> str:
    if not block:
        return "n/a"
    show = _pct if percent else (lambda v: "n/a" if v is None else f"{v:+.3f}")
    text = show(block.get("value"))
    if block.get("interval"):
        low, high = block["interval"]
        text += f" [{show(low)}, {show(high)}]"
    return text


def held_out_excess(result: dict, variant: str) -> dict | None:
    """The NSA statistics' held-out excess drop of ``variant`` (``{mean, low, high, n}`` plus the
    backend's ``verdict``), or None when the result has no held-out figure for it."""
    for comparison in result.get("comparison") or []:
        held = (comparison.get("statistics") or {}).get("held_out") if comparison.get("variant") == variant else None
        if held:
            return {**held["excess_drop"], "verdict": held.get("verdict")}
    return None


def _held_out_row(result: dict, variant: str) -> list[str]:
    excess = held_out_excess(result, variant)
    label = "Held-out excess activation drop (NSA statistics)"
    if excess is None:
        return [label, "n/a (no held-out statistics in this result)"]
    return [label, f"{interval_text(excess)} \u2014 {excess.get('verdict') or 'no verdict'}"]


def verdict_cards(result: dict) -> list[dict]:
    """One card per patched variant, then the ablation: ``{"title", "rows": [[label, value]],
    "lines": ["label: value"], "verdict", "reading", "note"}`` (``verdict``/``rows``/``note``
    are what ``static_figures.verdict_card_static`` draws; ``reading`` = ``verdict``)."""
    causal = result.get("causal") or {}
    note = (f"{causal.get('draws')} matched random sets; intervals: 95% bootstrap over examples "
            "(held-out excess: over texts)")
    cards = []
    for block in causal.get("patching", []):
        accuracy = block.get("accuracy", {})
        rows = [
            ["Recovery of the lost margin",
             (f"{_with_interval(block.get('recovery'))} ({block.get('examples_lost_margin')} of "
             f"{block.get('examples')} held-out examples lost margin)")],
            ["Matched random neurons",
             (f"{_with_interval(block.get('random'))}; every neuron of those layers: "
             f"{_with_interval(block.get('all_layers'))}")],
            ["Accuracy", " \u00b7 ".join(f"{name} {_with_interval(accuracy.get(name))}"
                                         for name in ("dense", "variant", "patched", "random"))],
        ]
        if block.get("p_value") is not None:
            rows.append([f"Empirical p-value vs {causal.get('draws')} matched random sets", f"{block['p_value']:.3f}"])
        rows.append(_held_out_row(result, block.get("variant")))
        cards.append(_card(f"Patching in {block.get('variant')}", rows, block.get("reading", ""), note))
    ablation = causal.get("ablation")
    if ablation:
        accuracy = ablation.get("accuracy", {})
        rows = [
            ["Margin drop",
             (f"{_with_interval(ablation.get('effect'), percent=False)} nats; matched random sets: "
             f"{_with_interval(ablation.get('random_effect'), percent=False)}")],
            ["Accuracy", " \u00b7 ".join(f"{name} {_with_interval(accuracy.get(name))}"
                                         for name in ("intact", "ablated", "random"))],
            [f"Empirical p-value vs {causal.get('draws')} matched random sets", f"{ablation.get('p_value', 1):.3f}"],
        ]
        cards.append(_card("Ablation in the dense model", rows, ablation.get("reading", ""), note))
    return cards


def _card(title: str, rows: list[list[str]], reading: str, note: str) -> dict:
    return {"title": title, "rows": rows, "lines": [f"{label}: {value}" for label, value in rows],
            "verdict": reading, "reading": reading, "note": note}


HELD_OUT_COLUMNS = ("held_out_excess", "held_out_low", "held_out_high", "held_out_verdict")


def verdict_csv(result: dict) -> str:
    """The backend's verdict rows (one per variant, one for the ablation) as CSV text, each
    patching row with its variant's held-out excess drop, interval and verdict (empty if none)."""
    rows = (result.get("causal") or {}).get("verdict") or []
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*rows[0], *HELD_OUT_COLUMNS])
    writer.writeheader()
    for row in rows:
        excess = held_out_excess(result, row["variant"]) if row.get("check") == "patching" else None
        held = dict.fromkeys(HELD_OUT_COLUMNS) if excess is None else dict(zip(
            HELD_OUT_COLUMNS, (excess.get("mean"), excess.get("low"), excess.get("high"), excess.get("verdict")),
            strict=True))
        writer.writerow({**row, **held})
    return buffer.getvalue()


def render(result: dict, result_id: str, key: str) -> None:
    """Draw the verdict cards and their CSV download (nothing when the result has no causal check)."""
    cards = verdict_cards(result)
    if not cards:
        return
    causal = result["causal"]
    st.subheader("Do these neurons explain the variant's loss?")
    st.caption(f"{causal.get('method')}; {causal.get('draws')} matched random sets (same layers, same dense "
               f"activation level); labels: {causal.get('label_source')}. Intervals: 95% bootstrap over examples.")
    for number, card in enumerate(cards):
        with st.container(border=True):
            st.markdown(f"**{card['title']}**")
            for line in card["lines"]:
                st.caption(line)
            st.markdown(card["reading"])
            st.download_button("Card (SVG)", _card_svg(card), file_name=f"nsa-{result_id}-card-{number}.svg",
                               mime="image/svg+xml", key=f"{key}_dl_card_{number}")
    st.download_button("Verdict (CSV)", verdict_csv(result), file_name=f"nsa-{result_id}-verdict.csv",
                       mime="text/csv", key=f"{key}_dl_verdict")


def _card_svg(card: dict) -> bytes:
    from frontend.views import static_figures

    return static_figures.figure_bytes(static_figures.verdict_card_static(card), "svg")


def dataset_job(api, common: dict, key: str) -> str | None:
    """A form that starts a dataset-level NSA job (POST /nsa/jobs) and follows it like a prune job.
    Returns the stored result's id once the job has succeeded."""
    with st.expander("Dataset-level run (a job: progress, cancel, patching)"):
        c1, c2, c3 = st.columns(3)
        dataset = c1.selectbox("Labelled dataset", DATASETS, key=f"{key}_job_dataset")
        count = c2.number_input("Examples", min_value=2, max_value=1000, value=100, key=f"{key}_job_n")
        patch = c3.checkbox("Patching", value=bool(common.get("variants")), key=f"{key}_job_patch",
                            help="Restore the neurons' dense activations in each variant (needs variants)")
        if st.button("Start the job", key=f"{key}_job_start"):
            from frontend import ui

            accepted = ui.fetch(api.nsa_job, {**common, "dataset": dataset, "n": int(count), "patch": patch},
                                what="NSA job")
            if accepted is not None:
                st.session_state[JOB_KEY] = accepted["job"]["id"]
    job_id = st.session_state.get(JOB_KEY)
    if not job_id:
        return None
    return _follow(api, job_id, key)


def _follow(api, job_id: str, key: str) -> str | None:
    job = api.job(job_id)
    if job["state"] == "succeeded":
        st.session_state.pop(JOB_KEY, None)
        return (job.get("result") or {}).get("result_id")
    if job["state"] in ("queued", "running"):
        @st.fragment(run_every=REFRESH_S)
        def progress() -> None:
            current = api.job(job_id)
            if current["state"] not in ("queued", "running"):
                st.rerun()
            bar, button = st.columns([6, 1], vertical_alignment="center")
            bar.progress(min(max(float(current.get("progress") or 0.0), 0.0), 1.0),
                         text=f"**{current['state']}** NSA job \u2014 {current.get('message') or ''}")
            if button.button("Cancel", key=f"{key}_job_cancel"):
                api.cancel_job(job_id)

        progress()
        return None
    st.session_state.pop(JOB_KEY, None)
    st.error(f"NSA job {job['state']}: {job.get('error') or job.get('message')}")
    return None
