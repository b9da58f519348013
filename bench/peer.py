"""Our SparseGPT and Wanda against llm-compressor's, on the same calibration and held-out windows.

The embedded SmolLM2-135M in float32 on CPU. Calibration: --nsamples windows x --seqlen tokens
of LAMBADA's calibration passages, drawn once per --seeds value with the project's own
``calibration_windows``; held-out (bench/protocol.py): the first --heldout-windows consecutive
windows of LAMBADA's held-out passages (in domain; ``perplexity``'s windows; the two sets of
passages are disjoint) and of two corpora the calibration never reads (IMDB reviews, BoolQ
passages: out of domain), so "at parity" is checked where a user deploys, not only in domain. Both sides
prune every linear layer of the decoder layers (not lm_head) layer by layer, each layer
calibrated on the outputs of the already pruned layers before it, SparseGPT with blocksize 128
and dampening 0.01 of the mean Hessian diagonal.

Ours: ``create_variant`` (the engine users run) on those windows. The peer: llm-compressor's
``oneshot`` with SparseGPTModifier / WandaPruningModifier, run by bench/peer_llmcompressor.py
in the peer's own virtual environment (--peer-python), reading exactly our windows from a
safetensors file; its pruned weights come back as safetensors and are measured here with the
project's ``perplexity``. Printed per method and held-out set: perplexity of ours and of the peer, the
ratio ours/peer with a paired 95% bootstrap interval over the held-out windows (it covers the
choice of held-out windows, not of calibration windows: that is what several --seeds show),
and the fraction of weights whose pruned/kept decision differs, per layer (two unrelated
random masks at 50 % differ on 50 % of the weights; --noise-floor measures what float rounding
alone gives, by running the peer twice). Goal: ratio <= 1.03 for each method. With
--sparsity-profile owl both sides use OWL's layerwise sparsity (issue 23's parity check at 70 %).

Not run by ``make bench``: it needs the peer environment, a virtual environment of its own
outside the project's .venv, set up once from the repository root with
  python3 -m venv ../peer-venv && ../peer-venv/bin/pip install torch==2.13.0 &&
  ../peer-venv/bin/pip install llmcompressor==0.14.0.1
and named with --peer-python or the PRUNELENS_PEER_PYTHON environment variable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import held_out_sets  # bench/ is the script's folder, first on sys.path

from backend.data.windows import calibration_windows
from backend.evaluation.perplexity import perplexity
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_applied

MODEL = "smollm2-135m-instruct"
CALIBRATION = "lambada"
GOAL = 1.03
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_llmcompressor.py"
BLOCKSIZE, PERCDAMP = 128, 0.01
SHOWN_LAYERS = (0, 1, 2, 5, 10, 15, 20, 25, 29)


def parse_spec(text: str) -> SparsitySpec:
    if ":" in text:
        n, m = (int(part) for part in text.split(":"))
        return SparsitySpec.nm(n, m)
    return SparsitySpec.unstructured(float(text))


def peer_mask_structure(spec: SparsitySpec) -> str:
    # llm-compressor's "N:M" counts the PRUNED weights per M; ours (NVIDIA's) the kept ones.
    return "0:0" if spec.kind == "unstructured" else f"{spec.m - spec.n}:{spec.m}"


def pruned_linears(model) -> dict[str, torch.Tensor]:
    """name -> weight parameter of every linear layer inside the decoder layers."""
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"}


def zero_masks(model) -> dict[str, torch.Tensor]:
    return {name: (weight == 0).cpu() for name, weight in pruned_linears(model).items()}


Measured = dict[str, tuple[float, np.ndarray]]  # held-out set -> (perplexity, per-window mean NLL)


def measure(loaded, sets: dict[str, str], heldout: int, seqlen: int) -> tuple[Measured, dict[str, torch.Tensor]]:
    """Perplexity and per-window mean token NLL on every held-out set, and the model's zero masks."""
    measured = {}
    for label, text_set in sets.items():
        result = perplexity(loaded, text_set, seqlen=seqlen, max_windows=heldout)
        measured[label] = (result["perplexity"], np.array(result["window_nll"]) / (seqlen - 1))
    return measured, zero_masks(loaded.model)


def ours(loaded, method: str, spec: SparsitySpec, args, seed: int, batch_size: int | None = None):
    """(held-out sets, masks, seconds, OWL layer sparsities or None); ``batch_size``: windows per
    forward (None: the engine's default)."""
    options = {"blocksize": BLOCKSIZE, "percdamp": PERCDAMP} if method == "sparsegpt" else {}
    if args.sparsity_profile == "owl":
        options |= {"sparsity_profile": "owl", "owl_m": args.owl_m, "owl_lambda": args.owl_lambda}
    config = PruneConfig(method, CALIBRATION, spec, nsamples=args.nsamples, seqlen=args.seqlen,
                         seed=seed, options=options, batch_size=batch_size)
    if batch_size is not None:  # the batch size is not part of the variant id: prune again, not reuse
        from backend.pruning.engine import variant_id
        from backend.pruning.variants import delete_variant, variant_exists

        if variant_exists(variant_id(loaded, config)):
            delete_variant(variant_id(loaded, config))
    started = time.perf_counter()
    created = create_variant(loaded, config)
    seconds = time.perf_counter() - started
    owl = created.manifest.get("owl", {}).get("layer_sparsity")
    with variant_applied(loaded, created.variant_id):
        return (*measure(loaded, args.sets, args.heldout_windows, args.seqlen), seconds, owl)


def peer(loaded, method: str, spec: SparsitySpec, args, windows_file: Path, work: Path, batch_size: int = 8):
    out = work / (f"peer-{windows_file.stem}-{method}-{spec.label.replace(':', 'of')}-{args.sparsity_profile}"
                  f"-batch{batch_size}")
    command = [args.peer_python, str(PEER_SCRIPT), "--model", str(args.model_dir), "--windows",
               str(windows_file), "--method", method, "--sparsity", str(spec.ratio),
               "--mask-structure", peer_mask_structure(spec), "--block-size", str(BLOCKSIZE),
               "--dampening", str(PERCDAMP), "--batch-size", str(batch_size), "--out", str(out)]
    if args.sparsity_profile == "owl":  # llm-compressor's names: sparsity_profile, owl_m, owl_lmbda
        command += ["--sparsity-profile", "owl", "--owl-m", str(args.owl_m), "--owl-lmbda", str(args.owl_lambda)]
    # The peer must not see the project: no PYTHONPATH, and its own working directory.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    log = work / f"{out.name}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        finished = subprocess.run(command, cwd=work, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  check=False)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"the peer failed (exit {finished.returncode}); last lines of {log}:\n"
                         + "\n".join(tail))
    from safetensors.torch import load_file

    weights = load_file(str(out / "weights.safetensors"))
    params = pruned_linears(loaded.model)
    if set(weights) != set(params):
        raise SystemExit(f"the peer pruned other layers than ours: {sorted(set(weights) ^ set(params))[:5]}")
    dense = {name: param.detach().clone() for name, param in params.items()}
    try:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
        measured = measure(loaded, args.sets, args.heldout_windows, args.seqlen)
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(dense[name])
    versions = json.loads((out / "versions.json").read_text())
    owl_file = out / "owl_layer_sparsity.json"
    owl = json.loads(owl_file.read_text()) if owl_file.exists() else None
    return (*measured, seconds, versions, owl)


def ratio_interval(ours_nll: np.ndarray, peer_nll: np.ndarray, seed: int) -> tuple[float, float]:
    """95% paired bootstrap interval of ppl_ours / ppl_peer = exp(mean over windows of the
    per-token NLL difference) (equal-length windows), resampling held-out windows."""
    from scipy.stats import bootstrap

    difference = ours_nll - peer_nll
    result = bootstrap((difference,), np.mean, n_resamples=10_000, confidence_level=0.95,
                       method="percentile", rng=np.random.default_rng(seed))
    return math.exp(result.confidence_interval.low), math.exp(result.confidence_interval.high)


def mask_differences(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[int, float]:
    """Per decoder layer: the fraction of its linear weights pruned by one side and kept by the other."""
    differ: dict[int, list[int]] = {}
    for name, mask in first.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        counts = differ.setdefault(layer, [0, 0])
        counts[0] += int((mask ^ second[name]).sum())
        counts[1] += mask.numel()
    return {layer: changed / total for layer, (changed, total) in sorted(differ.items())}


def layer_summary(differ: dict[int, float]) -> str:
    shown = ", ".join(f"{layer}: {differ[layer]:.3%}" for layer in SHOWN_LAYERS if layer in differ)
    return f"{shown}; mean over layers {np.mean(list(differ.values())):.3%}"


def sparsity(masks: dict[str, torch.Tensor]) -> float:
    return sum(int(mask.sum()) for mask in masks.values()) / sum(mask.numel() for mask in masks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--peer-python", default=os.environ.get("PRUNELENS_PEER_PYTHON", "../peer-venv/bin/python"),
                        help="python of the virtual environment where llmcompressor is installed "
                             "(default: $PRUNELENS_PEER_PYTHON, else ../peer-venv/bin/python)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--heldout-windows", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run per seed of the calibration window draw")
    parser.add_argument("--specs", nargs="+", default=["0.5"], help="0.5 (unstructured) and/or 2:4")
    parser.add_argument("--methods", nargs="+", choices=("sparsegpt", "wanda"), default=["sparsegpt", "wanda"])
    parser.add_argument("--sparsity-profile", choices=("uniform", "owl"), default="uniform",
                        help="owl: OWL layerwise sparsity on both sides (ours: sparsity_profile=owl; the peer's "
                             "modifiers: sparsity_profile='owl', owl_m, owl_lmbda); unstructured specs only")
    parser.add_argument("--owl-m", type=float, default=5.0, help="OWL's outlier threshold M")
    parser.add_argument("--owl-lambda", type=float, default=0.08, help="OWL's lambda (llm-compressor: owl_lmbda)")
    parser.add_argument("--peer-batch-size", type=int, default=8,
                        help="windows per forward on the peer's side (default 8). Rounding only, except "
                             "with OWL: llm-compressor's activation statistic is a sum of per-batch "
                             "norms, so only --peer-batch-size = --nsamples (one batch) gives the "
                             "norm over all tokens that OWL's paper and our engine use")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also run the peer with 1 window per forward instead of --peer-batch-size: "
                             "the same algorithm with other float rounding, so its mask differences "
                             "and perplexity ratio are what rounding alone gives")
    parser.add_argument("--self-floor", action="store_true",
                        help="also run ours with 1 window per forward: the same algorithm and, with "
                             "OWL too, the same statistic (ours is a norm over all tokens at any batch "
                             "size), so its ratio to ours is what float rounding alone moves")
    args = parser.parse_args()
    # The peer runs in a scratch working directory: a relative interpreter path is the caller's.
    args.peer_python = str(Path(args.peer_python).absolute())
    if not os.access(args.peer_python, os.X_OK):
        print(f"peer python {args.peer_python} not found: create the peer environment (see --help) "
              "or pass --peer-python", file=sys.stderr)
        return 2
    specs = [parse_spec(text) for text in args.specs]

    from backend.models.loader import load_model
    from backend.process_setup import configure_process

    configure_process()
    # Variants written by the benchmark go to a scratch cache, not the user's.
    os.environ.setdefault("PRUNELENS_CACHE_DIR", tempfile.mkdtemp(prefix="prunelens-bench-"))
    models = Path(os.environ["PRUNELENS_CACHE_DIR"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    embedded = Path("models_cache/models", MODEL).resolve()
    if embedded.is_dir() and not (models / MODEL).exists():
        (models / MODEL).symlink_to(embedded)
    loaded = load_model(MODEL, device="cpu", dtype="float32")
    args.model_dir = (models / MODEL).resolve()
    work = Path(tempfile.mkdtemp(prefix="prunelens-peer-"))
    args.sets = held_out_sets(work)

    dense, dense_masks = measure(loaded, args.sets, args.heldout_windows, args.seqlen)
    print(f"{MODEL} float32 CPU; calibration {args.nsamples} x {args.seqlen} tokens of {CALIBRATION} "
          f"(calibration passages), held-out {args.heldout_windows} x {args.seqlen} per set: "
          f"{', '.join(args.sets)}")
    print("dense held-out perplexity " + ", ".join(f"{label} {ppl:.3f}" for label, (ppl, _) in dense.items())
          + f" (dense weights exactly zero: {sparsity(dense_masks):.2e}); work files in {work}")
    rows = []
    versions: dict = {}
    for seed in args.seeds:
        windows = calibration_windows(loaded.tokenizer, CALIBRATION, args.nsamples, args.seqlen, seed,
                                      max_length=loaded.max_length)  # what create_variant draws
        windows_file = work / f"calibration-seed{seed}.safetensors"
        from safetensors.torch import save_file

        save_file({"input_ids": windows.contiguous()}, str(windows_file))
        for spec in specs:
            for method in args.methods:
                our_sets, our_masks, our_seconds, our_owl = ours(loaded, method, spec, args, seed)
                peer_sets, peer_masks, peer_seconds, versions, peer_owl = peer(
                    loaded, method, spec, args, windows_file, work, batch_size=args.peer_batch_size)
                differ = mask_differences(our_masks, peer_masks)
                print(f"\nseed {seed} {spec.label} {method}: ours {our_seconds:.0f}s, llm-compressor "
                      f"{versions['llmcompressor']} {peer_seconds:.0f}s; sparsity ours {sparsity(our_masks):.4f}, "
                      f"peer {sparsity(peer_masks):.4f}")
                print(f"  ours vs peer, weights whose pruned/kept decision differs per layer: "
                      f"{layer_summary(differ)}")
                if our_owl and peer_owl:
                    gaps = np.abs(np.asarray(our_owl) - np.asarray(peer_owl))
                    print(f"  OWL layer sparsities, ours - peer: max |difference| {gaps.max():.2e} "
                          f"(layer {int(gaps.argmax())}), mean {gaps.mean():.2e}")
                if args.self_floor:
                    self_sets, self_masks, _, _ = ours(loaded, method, spec, args, seed, batch_size=1)
                    print(f"  ours batch 1 vs ours (default batch), masks differ per layer: "
                          f"{layer_summary(mask_differences(self_masks, our_masks))}")
                    for label in args.sets:
                        low, high = ratio_interval(self_sets[label][1], our_sets[label][1], seed)
                        print(f"  {label:<18} ours batch 1 / ours {self_sets[label][0] / our_sets[label][0]:.4f} "
                              f"[{low:.4f}, {high:.4f}]")
                floor_sets = None
                if args.noise_floor:
                    floor_sets, floor_masks, _, _, _ = peer(loaded, method, spec, args, windows_file, work,
                                                            batch_size=1)
                    print(f"  peer batch 1 vs peer batch {args.peer_batch_size}, masks differ per layer: "
                          f"{layer_summary(mask_differences(floor_masks, peer_masks))}")
                for label in args.sets:
                    (our_ppl, our_nll), (peer_ppl, peer_nll) = our_sets[label], peer_sets[label]
                    low, high = ratio_interval(our_nll, peer_nll, seed)
                    rows.append((seed, spec.label, method, label, our_ppl, peer_ppl, low, high,
                                 float(np.mean(list(differ.values())))))
                    line = (f"  {label:<18} ours {our_ppl:8.3f}  peer {peer_ppl:8.3f}  "
                            f"ratio {our_ppl / peer_ppl:.4f} [{low:.4f}, {high:.4f}]")
                    if floor_sets is not None:
                        floor_ppl, floor_nll = floor_sets[label]
                        floor_low, floor_high = ratio_interval(floor_nll, peer_nll, seed)
                        line += (f"; peer vs peer (batch 1 / {args.peer_batch_size}) {floor_ppl / peer_ppl:.4f} "
                                 f"[{floor_low:.4f}, {floor_high:.4f}]")
                    print(line)
                sys.stdout.flush()

    print(f"\npeer versions: {json.dumps(versions)}")
    print(f"\n| seed | spec | method | held-out | ours | peer | ours/peer | 95% CI (held-out windows) "
          f"| masks differ |   goal <= {GOAL}")
    print("|---|---|---|---|---:|---:|---:|---|---:|")
    worst = 0.0
    for seed, label, method, text_set, our_ppl, peer_ppl, low, high, differ_mean in rows:
        ratio = our_ppl / peer_ppl
        worst = max(worst, ratio)
        print(f"| {seed} | {label} | {method} | {text_set} | {our_ppl:.3f} | {peer_ppl:.3f} | {ratio:.4f} "
              f"| [{low:.4f}, {high:.4f}] | {differ_mean:.3%} |")
    print("dense " + ", ".join(f"{label} {ppl:.3f}" for label, (ppl, _) in dense.items())
          + f"; worst ratio {worst:.4f} (goal <= {GOAL})")
    if len(args.seeds) > 1:
        print_pooled(rows)
    return 0


def print_pooled(rows: list[tuple]) -> None:
    """Per spec, method and held-out set: the geometric mean of ours/peer over the calibration
    draws, with a t interval over the draws (each draw one observation of log(ours/peer)): the
    draw-to-draw spread, which one draw's bootstrap over held-out windows does not see."""
    from scipy.stats import ttest_1samp

    groups: dict[tuple, list[float]] = {}
    for _seed, label, method, text_set, our_ppl, peer_ppl, *_ in rows:
        groups.setdefault((label, method, text_set), []).append(math.log(our_ppl / peer_ppl))
    print(f"\npooled over {len(next(iter(groups.values())))} calibration draws: geometric mean of ours/peer "
          "[95% t interval over draws]")
    for (label, method, text_set), logs in groups.items():
        low, high = ttest_1samp(logs, 0.0).confidence_interval(0.95)
        print(f"  {label} {method} {text_set:<20} {math.exp(np.mean(logs)):.4f} "
              f"[{math.exp(low):.4f}, {math.exp(high):.4f}]")


if __name__ == "__main__":
    sys.exit(main())
