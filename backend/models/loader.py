"""Resolve a model reference (embedded name | hub id | local directory) and load it.

Only safetensors weights are ever loaded and ``trust_remote_code`` stays off unless the
settings turn it on: a model reference must never be a way to run foreign code.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from backend.config import Settings, get_settings, resolve_device, resolve_dtype
from backend.errors import UserError
from backend.models.adapters import ArchitectureAdapter, adapter_for
from backend.models.embedded import EMBEDDED_NAME, convert_embedded, is_converted

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclass
class LoadedModel:
    """A model ready for pruning and attribution, with what is needed to talk about it."""

    name: str  # the reference the user gave, canonical for ids and the results store
    model: PreTrainedModel
    tokenizer: Any  # a transformers tokenizer (PreTrainedTokenizerBase; its stubs are partial)
    adapter: ArchitectureAdapter
    source: str  # "embedded", "hub" or "local"
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048


@dataclass(frozen=True)
class ModelRef:
    kind: str  # "embedded" | "hub" | "local"
    name: str
    path: Path | None = None


def parse_model_ref(reference: str, settings: Settings | None = None) -> ModelRef:
    settings = settings or get_settings()
    reference = reference.strip()
    if not reference:
        raise UserError("empty model name")
    if reference == EMBEDDED_NAME:
        return ModelRef("embedded", EMBEDDED_NAME, settings.models_dir / EMBEDDED_NAME)
    local = Path(reference).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{reference}: a model directory needs a config.json")
        return ModelRef("local", str(local.resolve()), local.resolve())
    if _HUB_ID.match(reference) and ".." not in reference:
        return ModelRef("hub", reference)
    raise UserError(
        f"unknown model {reference!r}: give '{EMBEDDED_NAME}', a hub id like 'facebook/opt-125m', "
        "or an existing local directory"
    )


def load_model(
    reference: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    settings: Settings | None = None,
) -> LoadedModel:
    settings = settings or get_settings()
    ref = parse_model_ref(reference or settings.default_model, settings)
    torch_device = resolve_device(device or settings.device)
    torch_dtype = resolve_dtype(dtype or settings.dtype, torch_device)
    started = time.perf_counter()

    if ref.kind == "embedded":
        assert ref.path is not None, "an embedded reference always names its folder"
        if not is_converted(ref.path):
            convert_embedded(ref.path)
        location = str(ref.path)
    elif ref.kind == "local":
        location = str(ref.path)
    else:
        location = ref.name

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=settings.trust_remote_code)
    except OSError as exc:
        if ref.kind == "hub":
            raise UserError(
                f"cannot fetch {ref.name!r} from the model hub (offline, private or misspelled); "
                f"'{EMBEDDED_NAME}' works offline"
            ) from exc
        raise UserError(f"{location}: not a readable model directory ({exc.__class__.__name__})") from exc
    except ValueError as exc:
        raise UserError(f"{ref.name}: {str(exc).splitlines()[0]}") from exc

    try:
        model = AutoModelForCausalLM.from_pretrained(
            location,
            config=config,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=settings.trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=settings.trust_remote_code)
    except OSError as exc:
        raise UserError(
            f"{ref.name}: could not load safetensors weights and tokenizer "
            f"({str(exc).splitlines()[0][:200]})"
        ) from exc
    model.to(torch_device)  # type: ignore[arg-type]  # transformers' wrapper hides Module.to
    model.eval()
    adapter = adapter_for(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        name=ref.name,
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        source=ref.kind,
        load_seconds=time.perf_counter() - started,
    )


def list_models(settings: Settings | None = None) -> list[dict]:
    """The embedded default and every converted/cached model directory."""
    settings = settings or get_settings()
    rows = [
        {
            "name": EMBEDDED_NAME,
            "source": "embedded",
            "converted": is_converted(settings.models_dir / EMBEDDED_NAME),
            "default": settings.default_model == EMBEDDED_NAME,
        }
    ]
    if settings.models_dir.is_dir():
        for path in sorted(settings.models_dir.iterdir()):
            if path.name == EMBEDDED_NAME or path.name.startswith(".") or not path.is_dir():
                continue
            if (path / "config.json").is_file():
                rows.append(
                    {"name": str(path), "source": "local", "converted": True,
                     "default": settings.default_model == str(path)}
                )
    return rows
