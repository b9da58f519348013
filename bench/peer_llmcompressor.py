"""The peer side of bench/peer.py: prune with llm-compressor's SparseGPT or Wanda, save the weights.

Runs in the peer's own virtual environment (llmcompressor installed there, never in the
project's), as a subprocess of bench/peer.py; it imports nothing from the project. It reads the
calibration windows bench/peer.py wrote (safetensors, ``input_ids`` [windows, tokens]), runs
``oneshot`` with the sequential pipeline (one decoder layer at a time, each layer's outputs
recomputed with its pruned weights before the next layer calibrates, as our engine does) and
writes every pruned weight as safetensors, keyed by parameter name, plus a JSON of versions.

Not run by ``make bench``: it needs the peer environment (see docs/pruning-methods.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OWL_SPARSITIES: list[float] = []  # filled by the OWL profile, in decoder layer order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", required=True, help="the dense model directory (safetensors)")
    parser.add_argument("--windows", required=True, help="safetensors file with input_ids [n, seqlen]")
    parser.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--mask-structure", default="0:0",
                        help="llm-compressor's N:M, N = weights PRUNED per M (2:4 is the same either way)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--dampening", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="windows per forward: float rounding only, except for OWL, whose activation "
                             "statistic is a sum of per-batch norms")
    parser.add_argument("--sparsity-profile", default=None, help="owl: OWL layerwise sparsity (the modifiers' own)")
    parser.add_argument("--owl-m", type=float, default=None)
    parser.add_argument("--owl-lmbda", type=float, default=None)
    parser.add_argument("--out", required=True, help="directory for weights.safetensors and versions.json")
    args = parser.parse_args()

    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from safetensors.torch import load_file, save_file

    if args.sparsity_profile == "owl":
        _let_owl_calibrate_before_initialization()
    torch.manual_seed(0)
    windows = load_file(args.windows)["input_ids"]  # [n, seqlen] int64
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    decoder_class = type(model.model.layers[0]).__name__  # e.g. LlamaDecoderLayer
    # targets = the decoder layers: every Linear inside them is pruned; embeddings, norms and
    # lm_head (outside the decoder layers) are not, as in our engine.
    common = {"sparsity": args.sparsity, "mask_structure": args.mask_structure,
              "targets": [decoder_class], "ignore": ["re:.*lm_head"]}
    if args.sparsity_profile is not None:
        common |= {"sparsity_profile": args.sparsity_profile, "owl_m": args.owl_m, "owl_lmbda": args.owl_lmbda}
    if args.method == "sparsegpt":
        modifier = SparseGPTModifier(block_size=args.block_size, dampening_frac=args.dampening, **common)
    else:
        modifier = WandaPruningModifier(**common)
    dataset = Dataset.from_dict({"input_ids": windows.tolist()})
    oneshot(
        model=model,
        dataset=dataset,
        recipe=[modifier],
        num_calibration_samples=windows.shape[0],
        max_seq_length=windows.shape[1],
        shuffle_calibration_samples=False,
        batch_size=args.batch_size,
        pipeline="sequential",
        sequential_targets=[decoder_class],
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Only the decoder layers' linear weights: the rest is the dense checkpoint, unchanged.
    weights = {
        f"{name}.weight": module.weight.detach().to("cpu", torch.float32).contiguous()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"
    }
    save_file(weights, str(out / "weights.safetensors"))
    if OWL_SPARSITIES:  # the peer's own layerwise sparsities, for bench/peer.py to set against ours
        (out / "owl_layer_sparsity.json").write_text(json.dumps(OWL_SPARSITIES))
    versions = {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                "transformers": transformers.__version__, "torch": torch.__version__}
    (out / "versions.json").write_text(json.dumps(versions))
    return 0


def _let_owl_calibrate_before_initialization() -> None:
    """Work around two faults of llm-compressor 0.14.0.1's OWL profile, each of which stops it on
    every model:

    1. "Cannot invoke event before initializing": the modifier measures its activation norms
       during its own initialization by running the basic calibration pipeline, and that pipeline
       announces calibration start and end to the session, whose lifecycle refuses events until
       initialization is over. The events only reach modifiers, none of which is initialized yet,
       so while the activations are measured they are skipped.
    2. The layerwise sparsities come back as a dict {decoder layer name: sparsity}, but the
       modifier hands a per-layer value to its modules only for a list (a dict reaches the pruning
       whole: "unsupported operand type(s) for *: 'int' and 'dict'"). They are given as a list in
       the order of the modifier's own target layers, the order its hooks use.

    Everything else (the norms, the outlier ratios, the sparsities, the pruning) is the peer's own
    code, unchanged."""
    import functools

    from llmcompressor.core.session_functions import LifecycleCallbacks
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    measure = SparsityModifierBase._get_activations
    announced = ("calibration_start", "sequential_epoch_end", "calibration_end")

    @functools.wraps(measure)
    def measure_quietly(self, *args, **kwargs):
        saved = {name: LifecycleCallbacks.__dict__[name] for name in announced}
        for name in announced:
            setattr(LifecycleCallbacks, name, classmethod(lambda cls, *a, **k: None))
        try:
            return measure(self, *args, **kwargs)
        finally:
            for name, original in saved.items():
                setattr(LifecycleCallbacks, name, original)

    SparsityModifierBase._get_activations = measure_quietly
    infer = SparsityModifierBase._infer_owl_layer_sparsity

    @functools.wraps(infer)
    def infer_as_list(self, *args, **kwargs):
        per_layer = infer(self, *args, **kwargs)  # {decoder layer name: sparsity}
        OWL_SPARSITIES[:] = [float(per_layer[name]) for name in self._target_layers]
        return list(OWL_SPARSITIES)

    SparsityModifierBase._infer_owl_layer_sparsity = infer_as_list


if __name__ == "__main__":
    sys.exit(main())
