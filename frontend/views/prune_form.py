"""The Variants page's prune form, built from what the backend declares: its methods and their options.

The methods come from ``GET /methods`` (every registered one, each with the JSON schema of its
options), the bounds and help of the common fields from the OpenAPI schema of ``PruneRequest``.
A method's options are shown only for that method (a depth method's amount, ``drop_blocks``, is one
of them, so it shows no sparsity field), the protection fields only when "Protect neurons" is not
"none" (and the upweight factor only with upweight). Not an ``st.form``: the fields shown depend on
choices made in it, so each choice redraws the form.
"""

from __future__ import annotations

import streamlit as st

from frontend.views import display, protect_view, schema_widgets

DEFAULT_METHOD = "wanda"  # preselected when the backend has it: fast, calibrated, the common baseline
DEFAULT_CALIBRATION = "lambada"  # general text that ships with the install (works offline)
# Quick jobs on a CPU by default; the bounds are the backend's.
DEFAULT_NSAMPLES = 16
DEFAULT_SEQLEN = 256
DEFAULT_NEURON_SPARSITY = "neurons:0.2"


def _with_default(schema: dict, default) -> dict:
    return {**schema, "default": default}


def prune_form(api, ui, model: str | None, methods: list[dict], request_schema: dict, calibration_rows: list[dict],
               key: str = "jobs") -> dict | None:
    """Draw the form; returns the POST /variants body when "Create variant" is pressed, else None."""
    fields = request_schema.get("properties", {})
    by_name = {method["name"]: method for method in methods}
    st.subheader("Prune")
    if not by_name:
        st.caption("The backend lists no pruning method.")
        return None
    names = list(by_name)
    name = st.selectbox("Method", names, key=f"{key}_method",
                        index=names.index(DEFAULT_METHOD) if DEFAULT_METHOD in names else 0,
                        help="Every method registered in the backend (GET /methods)")
    method = by_name[name]
    st.caption(method.get("description", ""))
    body: dict = {"model": model, "method": name}
    if method.get("needs_calibration", True):
        calibration_sets, labels, unreachable = display.calibration_choices(calibration_rows)
        body["calibration"] = st.selectbox(
            "Calibration set", calibration_sets, key=f"{key}_calibration",
            index=calibration_sets.index(DEFAULT_CALIBRATION) if DEFAULT_CALIBRATION in calibration_sets else 0,
            format_func=lambda set_name: labels.get(set_name, set_name),
            help="Sets that ship with the install come first and work offline")
        if unreachable:
            st.caption("Not available now, the model hub cannot be reached: " + ", ".join(unreachable))
    structured = bool(method.get("structured"))
    if not method.get("depth"):  # a depth method's amount is its option drop_blocks, not a sparsity
        # Keyed by the kind of method: a structured method's neurons:R is not carried over to a weight method.
        sparsity = st.text_input("Sparsity", value=DEFAULT_NEURON_SPARSITY if structured else "0.5",
                                 key=f"{key}_sparsity" + ("_neurons" if structured else ""),
                                 help=fields.get("sparsity", {}).get("description"))
        body["sparsity"] = sparsity.strip()
    if method.get("needs_calibration", True):
        n1, n2, n3 = st.columns(3)
        body["nsamples"] = schema_widgets.field_widget(
            n1, "nsamples", _with_default(fields.get("nsamples", {"type": "integer"}), DEFAULT_NSAMPLES),
            key=f"{key}_nsamples", label="Windows")
        body["seqlen"] = schema_widgets.field_widget(
            n2, "seqlen", _with_default(fields.get("seqlen", {"type": "integer"}), DEFAULT_SEQLEN),
            key=f"{key}_seqlen", label="Tokens each")
        body["seed"] = schema_widgets.field_widget(n3, "seed", fields.get("seed", {"type": "integer"}),
                                                   key=f"{key}_seed", label="Seed")
    options_schema = method.get("options") or {}
    if options_schema.get("properties"):
        st.markdown(f"**{name} options**")
        body["options"] = schema_widgets.schema_widgets(st, options_schema, key=f"{key}_opt_{name}")
    if method.get("protects"):
        body |= _protection(fields, key)
    if st.button("Create variant", type="primary", key=f"{key}_create"):
        return body
    return None


def _protection(fields: dict, key: str) -> dict:
    kind = st.selectbox("Protect neurons", protect_view.PROTECTION_KINDS, key=f"{key}_protect",
                        help="Keep the weights of chosen neurons (their gate/up rows and down column); "
                             "each layer still reaches its sparsity. See docs/guided-pruning.md")
    if kind == "none":
        return {}
    p1, p2 = st.columns(2)
    reference, task, ratio = "", "sst2", None
    if kind == "NSA result":
        reference = p1.text_input("NSA result id[:top k]", key=f"{key}_protect_result",
                                  help=fields.get("protect", {}).get("description"))
    else:
        task = schema_widgets.field_widget(p1, "protect_task", fields.get("protect_task", {"enum": ["sst2"]}),
                                           key=f"{key}_protect_task", label="Task")
        ratio = schema_widgets.field_widget(p2, "protect_ratio", fields.get("protect_ratio", {"type": "number"}),
                                            key=f"{key}_protect_ratio", label="Fraction of neurons")
    m1, m2 = st.columns(2)
    mode = schema_widgets.field_widget(m1, "protect_mode", fields.get("protect_mode", {"enum": ["keep"]}),
                                       key=f"{key}_protect_mode", label="Protection")
    factor = None
    if mode == "upweight":
        factor = schema_widgets.field_widget(m2, "protect_factor", fields.get("protect_factor", {"type": "number"}),
                                             key=f"{key}_protect_factor", label="Factor")
    return protect_view.protection_fields(kind, reference, task, ratio, mode, factor)
