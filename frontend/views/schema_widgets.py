"""Streamlit widgets generated from a JSON schema the backend serves (options declared in the backend once).

``GET /methods`` gives each pruning method's options and ``GET /nsa/options`` NSA's, as pydantic
JSON schemas: type, default, bounds (minimum/maximum, exclusive ones too), choices (enum) and
description. One widget per property, its bounds and help from there, so an option added in the
backend shows up here without a frontend change.
"""

from __future__ import annotations

import math
from typing import Any

# The smallest step away from an exclusive bound a float widget offers.
FLOAT_STEP = 0.01


def _plain(schema: dict) -> dict:
    """``anyOf: [X, null]`` (an optional field) -> X, with the outer default and description."""
    for option in schema.get("anyOf", ()):
        if option.get("type") != "null":
            return {**option, **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


def choices_of(schema: dict) -> list | None:
    schema = _plain(schema)
    if "enum" in schema:
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    return None


def bounds_of(schema: dict) -> tuple[float | None, float | None]:
    """(lowest, highest) value a widget may offer; exclusive bounds moved one step inside."""
    schema = _plain(schema)
    step = 1 if schema.get("type") == "integer" else FLOAT_STEP
    low = schema.get("minimum")
    if low is None and schema.get("exclusiveMinimum") is not None:
        low = schema["exclusiveMinimum"] + step
    high = schema.get("maximum")
    if high is None and schema.get("exclusiveMaximum") is not None:
        high = schema["exclusiveMaximum"] - step
    return low, high


def label_of(name: str, schema: dict) -> str:
    return schema.get("title") or name.replace("_", " ").capitalize()


def field_widget(container, name: str, schema: dict, *, key: str, label: str | None = None) -> Any:
    """One widget for property ``name`` of a JSON schema; returns the value chosen."""
    schema = _plain(schema)
    label = label or label_of(name, schema)
    help_text = schema.get("description")
    default = schema.get("default")
    choices = choices_of(schema)
    kind = schema.get("type")
    if choices is not None:
        index = choices.index(default) if default in choices else 0
        return container.selectbox(label, choices, index=index, key=key, help=help_text)
    if kind == "boolean":
        return container.checkbox(label, value=bool(default), key=key, help=help_text)
    if kind in ("integer", "number"):
        low, high = bounds_of(schema)
        if kind == "integer":
            value = int(default if default is not None else (low or 0))
            return int(container.number_input(label, min_value=None if low is None else int(low),
                                              max_value=None if high is None else int(high), value=value,
                                              step=1, key=key, help=help_text))
        start = float(default if default is not None else (low or 0.0))
        step = FLOAT_STEP if high is None or low is None or high - low > 10 * FLOAT_STEP else (high - low) / 10
        return float(container.number_input(label, min_value=None if low is None else float(low),
                                            max_value=None if high is None else float(high), value=start,
                                            step=step if math.isfinite(step) and step > 0 else FLOAT_STEP,
                                            format="%g", key=key, help=help_text))
    return container.text_input(label, value="" if default is None else str(default), key=key, help=help_text)


def schema_widgets(container, schema: dict, *, key: str) -> dict:
    """One widget per property of an options schema: ``{name: value}`` of those not at their default."""
    chosen = {}
    for name, prop in (schema.get("properties") or {}).items():
        value = field_widget(container, name, prop, key=f"{key}_{name}")
        if value != _plain(prop).get("default"):
            chosen[name] = value
    return chosen
