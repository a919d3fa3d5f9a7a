"""Exercise every CUDA code path on a machine with a GPU, and time them. Run as is:

    python bench/gpu_check.py --out gpu_check.json

CI has no GPU, so this script is where the CUDA branches run: capture on the GPU, CanICA's
covariance pass / block-Krylov eigenpairs / batched FastICA / consensus on the GPU (per-layer and
whole-model, i.e. the randomized subspace), the key-neuron plan, ``fnprune prune`` (the default
method) + saving with the model on the GPU, held-out perplexity of the pruned model there, and the
layer-streamed default method (obs selection + least-squares repair, one layer's statistics on the
device at a time) on the GPU against the same on the CPU: kept neurons and perplexity. It checks that the GPU's
results agree with the CPU's (same activations, same seed: key-neuron Jaccard at the same budget)
and exits non-zero when a check fails. Needs the default model and the Brown corpus (make setup);
``--allow-cpu --texts 4`` runs the same steps on a CPU as a smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_canica import jaccard, top_set  # the same key-set comparison (bench/ is on sys.path)

from fnprune.analysis.capture import ActivationStore
from fnprune.analysis.ica import CanICA
from fnprune.analysis.networks import analyze
from fnprune.corpus import load_corpus, split_heldout
from fnprune.models.loading import load_model


class StageClock:
    """Progress callback that times the stages: each lasts from the previous stage's last report
    (or the clock's creation) to its own last report."""

    def __init__(self):
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}              # insertion order = order of the stages

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        self.last[stage] = time.perf_counter()

    def seconds(self) -> dict[str, float]:
        out, previous = {}, self.start
        for stage, end in self.last.items():
            out[stage] = round(end - previous, 2)
            previous = end
        return out


def streamed_obs_check(device: str, docs, heldout, args, failures: list[str]) -> dict:
    """The default method (obs + least-squares repair), layer-streamed, on ``device`` and on the CPU
    (float32 weights on both): per-layer kept-neuron Jaccard and held-out perplexity."""
    from fnprune.evaluation.metrics import perplexity
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.spec import PruningSpec

    keeps, ppls, streamed = {}, {}, {}
    for dev in dict.fromkeys(["cpu", device]):
        m, mtok = load_model("smollm2-135m", device=dev, dtype=torch.float32)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        outcome = prune_with_networks(m, None, PruningSpec(), Calibration(mtok, docs[:min(args.texts, 40)],
                                                                          max_tokens=args.max_tokens, streamed=True))
        row = {"s": round(time.perf_counter() - t, 2), "widths": outcome.widths}
        if dev == "cuda":
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        keeps[dev] = outcome.keep
        ppls[dev] = perplexity(m, mtok, heldout[:args.heldout_docs], window=512)["ppl"]
        row["ppl"] = round(ppls[dev], 3)
        streamed[dev] = row
        del m
    jac = [len(np.intersect1d(a, b)) / max(len(np.union1d(a, b)), 1) for a, b in zip(keeps["cpu"], keeps[device],
                                                                                      strict=True)]
    streamed["min_layer_keep_jaccard"] = round(float(min(jac)), 4)
    streamed["ppl_change"] = round(abs(ppls[device] / ppls["cpu"] - 1), 5)
    if streamed["min_layer_keep_jaccard"] < args.min_keep_jaccard:
        failures.append(f"streamed obs: kept neurons {device} vs cpu, per-layer Jaccard {min(jac):.3f}")
    if streamed["ppl_change"] > args.max_ppl_change:
        failures.append(f"streamed obs: perplexity {device} {ppls[device]:.2f} vs cpu {ppls['cpu']:.2f}")
    return streamed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--components", type=int, default=128)
    parser.add_argument("--check-layers", default="5,15,25", help="layers whose CanICA runs on both devices")
    parser.add_argument("--min-jaccard", type=float, default=0.8,
                        help="GPU-vs-CPU key-neuron agreement below this fails the check")
    parser.add_argument("--heldout-docs", type=int, default=5, help="held-out documents for the perplexity check")
    parser.add_argument("--min-keep-jaccard", type=float, default=0.95,
                        help="streamed obs: per-layer kept-neuron Jaccard device vs CPU below this fails the check")
    parser.add_argument("--max-ppl-change", type=float, default=0.01,
                        help="streamed obs: relative perplexity difference device vs CPU above this fails the check")
    parser.add_argument("--corpus", default="brown", help="calibration and held-out corpus (default brown)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (smoke test)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu:
        device = "cpu"
    else:
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); --allow-cpu for a CPU smoke test",
              file=sys.stderr)
        return 2
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False     # compare like with like
        torch.cuda.reset_peak_memory_stats()
    result: dict = {"device": device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="fnprune-gpu-check-"))

    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m", device=device)
    result["load_s"] = round(time.perf_counter() - t0, 2)
    calibration, heldout = split_heldout(load_corpus(args.corpus))
    docs = calibration[:args.texts]

    # 1. the whole analysis on the device (capture + CanICA of every layer), store kept for step 2
    clock = StageClock()
    t0 = time.perf_counter()
    networks = analyze(model, tok, docs, n_components=args.components, max_tokens=args.max_tokens,
                       device=device, work_dir=work, random_state=0, model_spec="smollm2-135m",
                       corpus_spec=args.corpus, progress=clock)
    result["analyze"] = {"wall_s": round(time.perf_counter() - t0, 2), "stages_s": clock.seconds(),
                         "n_tokens": networks.info["n_tokens"], "n_components": networks.n_components}
    run_dir = networks.save(work / "run")

    # 2. the same activations decomposed on the CPU and on the device: masks must agree
    store = ActivationStore.open(work / "activations")
    checks = []
    for layer in [int(x) for x in args.check_layers.split(",") if int(x) < len(store.layers)]:
        X = store.layer_matrix(layer)
        row = {"layer": layer}
        scores = {}
        for dev in dict.fromkeys(["cpu", device]):
            t = time.perf_counter()
            ica = CanICA(args.components, random_state=layer, device=dev).fit(X)
            row[f"{dev}_s"] = round(time.perf_counter() - t, 2)
            scores[dev] = ica.key_score_.reshape(-1, store.width).max(0)
            row[f"{dev}_stable"] = int(ica.stable_.sum())
        budget = int((scores["cpu"] > 3.0).sum())
        row["budget"] = budget
        row["jaccard_device_vs_cpu"] = jaccard(top_set(scores["cpu"], budget), top_set(scores[device], budget))
        if row["jaccard_device_vs_cpu"] < args.min_jaccard:
            failures.append(f"layer {layer}: {device} vs cpu key-neuron Jaccard {row['jaccard_device_vs_cpu']:.2f}")
        checks.append(row)
    result["canica_device_vs_cpu"] = checks

    # 3. whole-model CanICA over five layers (15,360 columns: the randomized subspace) on the device
    blocks = [store.layer_matrix(lyr) for lyr in store.layers[:5]]
    t = time.perf_counter()
    whole = CanICA(args.components, n_init=4, subspace="randomized", random_state=0, device=device).fit(blocks)
    result["whole_model"] = {"layers": store.layers[:5], "subspace": whole.subspace_,
                             "s": round(time.perf_counter() - t, 2), "stable": int(whole.stable_.sum())}
    if not np.isfinite(whole.components_).all():
        failures.append("whole-model CanICA gave non-finite maps")

    # 4. the default method at 20 % with the model on the device, saved, reloaded, held-out perplexity
    from fnprune.cli import main as cli_main
    from fnprune.evaluation.metrics import perplexity
    from fnprune.models.pruned_io import load_pruned

    t = time.perf_counter()
    rc = cli_main(["prune", str(run_dir), "--target-ratio", "0.2", "--calib-docs", str(min(args.texts, 40)),
                   "--corpus", args.corpus, "--heldout-docs", str(args.heldout_docs),
                   "--out", str(work / "pruned"), "--quiet"])
    result["prune"] = {"rc": rc, "s": round(time.perf_counter() - t, 2)}
    if rc != 0:
        failures.append(f"fnprune prune exited {rc}")
    else:
        pruned, ptok = load_pruned(work / "pruned", device=device)
        dense_ppl = perplexity(model, tok, heldout[:args.heldout_docs], window=512)["ppl"]
        pruned_ppl = perplexity(pruned, ptok, heldout[:args.heldout_docs], window=512)["ppl"]
        result["prune"].update(device=str(next(pruned.parameters()).device), dense_ppl=round(dense_ppl, 2),
                               pruned_ppl=round(pruned_ppl, 2))
        if not (np.isfinite(pruned_ppl) and pruned_ppl < 10 * dense_ppl):
            failures.append(f"pruned perplexity {pruned_ppl:.1f} vs dense {dense_ppl:.1f}")

    # 5. obs + least-squares repair, layer-streamed, on the device and on the CPU
    result["streamed_obs_device_vs_cpu"] = streamed_obs_check(device, docs, heldout, args, failures)

    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    if device == "cuda":
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    result["failures"] = failures
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
