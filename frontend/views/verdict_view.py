"""The causal verdict of an NSA result (patching per variant, ablation) as cards, CSV, and a dataset job.

The backend computes every number and reading (``result["causal"]``); this module only lays them
out: one card per variant with recovery vs matched-random neurons, the accuracies with their
intervals, the ablation effect vs its null, and the backend's one-line reading.
"""

from __future__ import annotations

import csv
import io

import streamlit as st

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


def verdict_cards(result: dict) -> list[dict]:
    """``[{"title", "lines": [...], "reading"}]``: one card per patched variant, then the ablation."""
    causal = result.get("causal") or {}
    cards = []
    for block in causal.get("patching", []):
        accuracy = block.get("accuracy", {})
        lines = [
            (f"Recovery of the lost margin: {_with_interval(block.get('recovery'))} "
            f"({block.get('examples_lost_margin')} of {block.get('examples')} held-out examples lost margin)"),
            (f"Matched random neurons: {_with_interval(block.get('random'))}; "
            f"every neuron of those layers: {_with_interval(block.get('all_layers'))}"),
            "Accuracy: " + " \u00b7 ".join(f"{name} {_with_interval(accuracy.get(name))}"
                                          for name in ("dense", "variant", "patched", "random")),
        ]
        if block.get("p_value") is not None:
            lines.append(f"Empirical p-value vs {causal.get('draws')} matched random sets: {block['p_value']:.3f}")
        cards.append({"title": f"Patching in {block.get('variant')}", "lines": lines,
                      "reading": block.get("reading", "")})
    ablation = causal.get("ablation")
    if ablation:
        accuracy = ablation.get("accuracy", {})
        cards.append({
            "title": "Ablation in the dense model",
            "lines": [
                (f"Margin drop: {_with_interval(ablation.get('effect'), percent=False)} nats; matched random sets: "
                f"{_with_interval(ablation.get('random_effect'), percent=False)}"),
                "Accuracy: " + " \u00b7 ".join(f"{name} {_with_interval(accuracy.get(name))}"
                                              for name in ("intact", "ablated", "random")),
                f"Empirical p-value vs {causal.get('draws')} matched random sets: {ablation.get('p_value', 1):.3f}",
            ],
            "reading": ablation.get("reading", ""),
        })
    return cards


def verdict_csv(result: dict) -> str:
    """The backend's verdict rows (one per variant, one for the ablation) as CSV text."""
    rows = (result.get("causal") or {}).get("verdict") or []
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
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
    for card in cards:
        with st.container(border=True):
            st.markdown(f"**{card['title']}**")
            for line in card["lines"]:
                st.caption(line)
            st.markdown(card["reading"])
    st.download_button("Verdict (CSV)", verdict_csv(result), file_name=f"nsa-{result_id}-verdict.csv",
                       mime="text/csv", key=f"{key}_dl_verdict")


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
