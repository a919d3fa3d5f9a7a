"""Scale benchmark (issue 21): the default pipeline on a 1B-shaped model, with wall time and peak RSS.

1. A randomly initialised LLaMA with Llama-3.2-1B's block shapes (16 layers, hidden 2048, MLP 8192,
   32 query / 8 KV heads, tied embeddings; the default tokenizer's vocabulary) is saved as a local
   Hugging Face directory (float32).
2. ``fnprune analyze`` and ``fnprune prune`` (default method, 20% of all parameters) run on it and on
   the default model, each as its own process: wall time, peak RSS (the child's ``VmHWM``, polled) with
   the progress event it followed and its anonymous / file-backed split, and per-stage and per-layer
   times from the CLI's progress log (``FNPRUNE_PROGRESS_LOG``).
3. In this process, the per-layer pieces of the default method at each MLP width ``I``: a float64
   ``torch.linalg.inv`` of an ``(I+1)²`` matrix (the linear-algebra floor of an exact OBS layer), the
   OBS greedy, the least-squares re-fit, and the moments' accumulation per token.
4. A per-layer cost model fitted on those (``t_greedy = a I³``, ``t_moments = b · tokens · I²``) with
   its prediction for 8B- and 70B-shaped models, and the float64 GEMM rate measured here (what the
   prediction for a GPU divides by, stated as an assumption).

    python bench/bench_scale.py --out bench/results/scale [--docs 16] [--max-tokens 256] [--models 135m,1b]

Writes ``scale.json`` (numbers only) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend.serve import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (layers, hidden, MLP width, query heads, KV heads)
    "1b": (16, 2048, 8192, 32, 8),
    "8b": (32, 4096, 14336, 32, 8),
    "70b": (80, 8192, 28672, 64, 8),
}


def make_1b_model(out: Path) -> Path:
    """The 1B-shaped random LLaMA (seed 0, std 0.02) with the default model's tokenizer, saved once."""
    if (out / "config.json").exists():
        return out
    from transformers import LlamaConfig, LlamaForCausalLM

    from fnprune.models.loading import load_model

    _, tok = load_model("smollm2-135m", device="cpu")
    layers, hidden, width, heads, kv = SHAPES["1b"]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=width, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=True, rope_theta=500000.0, initializer_range=0.02,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; wall time, peak RSS of the process (GB) and per-stage seconds from its progress log."""
    log.unlink(missing_ok=True)
    env = dict(os.environ, FNPRUNE_PROGRESS_LOG=str(log))
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=die_with_parent)  # stops with this process
    hwm = _HighWaterMark(proc.pid)
    out = proc.stdout.read()
    hwm.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}")
    stages: dict[str, list[float]] = {}
    per_layer: dict[str, list[float]] = {}  # stage: seconds between consecutive "layer N" events
    previous: dict[str, float] = {}
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    peak_at = "before the first progress event"  # the last progress event before the highest RSS sample
    for e in events:
        if e["t"] <= hwm.peak_time:
            peak_at = f"{e['stage']}: {e.get('message', '')}"
    for e in events:
        first_last = stages.setdefault(e["stage"], [e["t"], e["t"]])
        first_last[1] = e["t"]
        if str(e.get("message", "")).startswith("layer "):
            if e["stage"] in previous:
                per_layer.setdefault(e["stage"], []).append(round(e["t"] - previous[e["stage"]], 2))
            previous[e["stage"]] = e["t"]
    return {"cmd": " ".join(cmd[2:]), "wall_s": round(wall, 1), "peak_rss_gb": round(hwm.kib / 1024 ** 2, 2),
            "ru_maxrss_gb": round(usage.ru_maxrss / 1024 ** 2, 2), "peak_rss_at": peak_at,
            "peak_rss_sampled_gb": {k: round(v / 1024 ** 2, 2) for k, v in hwm.at_peak.items()},
            "per_layer_s": per_layer, "loadavg_end": os.getloadavg(),
            "stages_s": {k: round(v[1] - v[0], 1) for k, v in stages.items()},
            "before_first_stage_s": round(min(v[0] for v in stages.values()) - start, 1) if stages else None,
            "stdout_tail": out[-1500:]}


class _HighWaterMark:
    """The child's peak RSS as ``VmHWM`` of its own image, polled until it closes its output. ``wait4``'s
    ``ru_maxrss`` is kept as well, but it also counts the memory this (large) process had when it forked."""

    def __init__(self, pid: int, every: float = 0.5):
        import threading

        self.pid, self.kib, self._done = pid, 0, threading.Event()
        self.peak_time, self.at_peak = 0.0, {}   # when the sampled VmRSS was highest, and RssAnon/RssFile then
        self._thread = threading.Thread(target=self._poll, args=(every,), daemon=True)
        self._thread.start()

    def _poll(self, every: float) -> None:
        while not self._done.is_set():
            try:
                status = {line.split(":")[0]: int(line.split()[1])
                          for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                          if line.startswith(("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:"))}
                self.kib = max(self.kib, status.get("VmHWM", 0))
                if status.get("VmRSS", 0) > self.at_peak.get("VmRSS", 0):
                    self.peak_time, self.at_peak = time.time(), status
            except (OSError, ValueError):
                pass
            self._done.wait(every)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _inv_seconds(width: int, repeat: int = 3) -> float:
    """Median seconds of one float64 ``torch.linalg.inv`` of an ``(I+1)²`` SPD matrix (the floor of an exact OBS layer)."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn((width + 1, width + 1), generator=gen, dtype=torch.float64)
    A = X @ X.T / width + torch.eye(width + 1, dtype=torch.float64)
    return round(_median_time(lambda: torch.linalg.inv(A), repeat), 3)


def _median_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def layer_costs(width: int, hidden: int, tokens: int, repeat: int) -> dict:
    """Per-layer times of the default method's pieces at MLP width ``width`` (float64, this CPU)."""
    from fnprune.pruning.layerwise import LayerMoments
    from fnprune.pruning.repair import obs_removal_order

    gen = torch.Generator().manual_seed(0)
    X = torch.randn((tokens, width), generator=gen).relu_()                # activation-like (tokens, I)
    W = torch.randn((hidden, width), generator=gen) * 0.02
    G = (X.double().T @ X.double()) / tokens
    mean = X.double().mean(0)
    inv_s = _inv_seconds(width, repeat)

    def moments():
        m = LayerMoments(width, plain=False, weighted=True)
        for r0 in range(0, tokens, 1024):
            m.add(X[r0:r0 + 1024], torch.ones(min(1024, tokens - r0)))
        m.finish()
    moments_s = _median_time(moments, 1)
    t = time.perf_counter()
    order, _ = obs_removal_order(W, G, mean, min_width=int(0.2 * width))
    greedy_s = time.perf_counter() - t
    from fnprune.pruning.repair import refit_down

    class _Down:  # refit_down reads adapter.down.weight only
        def __init__(self, w):
            self.down = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            self.down.weight.data = w

    keep = torch.as_tensor(np.sort(order[int(0.2 * width):]))
    refit_s = _median_time(lambda: refit_down(_Down(W), keep, G, mean), 1)
    n = 2048
    a, b = torch.randn((n, n), dtype=torch.float64), torch.randn((n, n), dtype=torch.float64)
    gemm_s = _median_time(lambda: a @ b, 3)
    return {"width": width, "hidden": hidden, "tokens": tokens, "inv_float64_s": round(inv_s, 3),
            "greedy_s": round(greedy_s, 2), "greedy_over_inv": round(greedy_s / inv_s, 2),
            "refit_s": round(refit_s, 3), "moments_s": round(moments_s, 3),
            "gemm_float64_gflops": round(2 * n ** 3 / gemm_s / 1e9, 1)}


def cost_model(costs: list[dict]) -> dict:
    """``t_greedy = a I³``, ``t_moments = b tokens I²`` fitted by least squares on log scale (one ``a``, ``b``)."""
    a = float(np.exp(np.mean([np.log(c["greedy_s"] / c["width"] ** 3) for c in costs])))
    b = float(np.exp(np.mean([np.log(c["moments_s"] / (c["tokens"] * c["width"] ** 2)) for c in costs])))
    gflops = float(np.median([c["gemm_float64_gflops"] for c in costs]))
    predictions = {}
    for name in ("8b", "70b"):
        layers, hidden, width, _, _ = SHAPES[name]
        greedy_flops = a * width ** 3 * gflops * 1e9            # the greedy's work in this CPU's float64 GEMM flops
        stats_gb = (4 + 8 + 8) * (width + 1) ** 2 / 1e9         # float32 moment + the greedy's P and Q (float64)
        predictions[name] = {
            "layers": layers, "width": width, "hidden": hidden,
            "cpu_greedy_s_per_layer": round(a * width ** 3, 1),
            "cpu_hours_all_layers": round(a * width ** 3 * layers / 3600, 2),
            "gpu_greedy_s_per_layer_at_30_tflops_fp64": round(greedy_flops / 30e12, 2),
            "one_layer_statistics_gb": round(stats_gb, 2),
            "weights_gb_bf16": round(2 * (layers * (4 * hidden * hidden * 0.625 + 3 * hidden * width)) / 1e9, 1),
        }
    return {"a_greedy_s_per_I3": a, "b_moments_s_per_token_I2": b, "cpu_gemm_float64_gflops": gflops,
            "formula": "t_layer = a*I^3 (greedy) + b*tokens*I^2 (moments); GPU: a*I^3*(CPU GFLOP/s) / 30 TFLOP/s fp64",
            "predictions": predictions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--models", default="135m,1b")
    parser.add_argument("--layer-only", action="store_true", help="only the per-layer costs and the cost model")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    fnprune = [sys.executable, "-m", "fnprune.cli"]
    result: dict = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "docs": args.docs,
                    "max_tokens": args.max_tokens, "runs": {}}
    tokens = args.docs * args.max_tokens
    result["layer_costs"] = [layer_costs(1536, 576, tokens, 3), layer_costs(8192, 2048, tokens, 1)]
    result["cost_model"] = cost_model(result["layer_costs"])
    if not args.layer_only:
        for name in args.models.split(","):
            model = "smollm2-135m" if name == "135m" else str(make_1b_model(args.out / "llama-1b-shaped"))
            run, pruned = args.out / f"run-{name}", args.out / f"pruned-{name}"
            load_start = os.getloadavg()
            analyze = run_measured(fnprune + ["analyze", "--model", model, "--corpus", "brown", "--texts", str(args.docs),
                                              "--max-tokens", str(args.max_tokens), "--out", str(run)],
                                   args.out / f"progress-analyze-{name}.jsonl")
            width = SHAPES["1b"][2] if name == "1b" else 1536
            inv_before = _inv_seconds(width)
            prune = run_measured(fnprune + ["prune", str(run), "--model", model, "--corpus", "brown", "--target-ratio",
                                            "0.2", "--calib-docs", str(args.docs), "--max-tokens", str(args.max_tokens),
                                            "--heldout-docs", "4", "--fidelity", "0", "--out", str(pruned),
                                            "--overwrite"],
                                 args.out / f"progress-prune-{name}.jsonl")
            floor = {"inv_float64_s_before": inv_before,
                     "inv_float64_s_after": _inv_seconds(width)}
            select, repair = prune["per_layer_s"].get("select", []), prune["per_layer_s"].get("prune", [])
            inv = min(floor["inv_float64_s_before"], floor["inv_float64_s_after"])
            if select:  # the pruning stage's time per layer against the floor (issue 21 item 4: <= 3x)
                floor["select_s_per_layer_median"] = float(np.median(select))
                floor["select_over_inv"] = round(floor["select_s_per_layer_median"] / inv, 2)
            if select and repair:  # both streamed passes: choose (moments + greedy), then prune (moments + re-fit)
                floor["prune_s_per_layer_median"] = float(np.median(repair))
                floor["select_and_prune_over_inv"] = round((floor["select_s_per_layer_median"]
                                                            + floor["prune_s_per_layer_median"]) / inv, 2)
            weights_gb = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) / 1024 ** 3 \
                if name != "135m" else None
            result["runs"][name] = {"analyze": analyze, "prune": prune, "float32_weights_gb": weights_gb,
                                    "floor": floor, "loadavg_start": load_start}
            (args.out / "scale.json").write_text(json.dumps(result, indent=1))
    (args.out / "scale.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    for name, r in result["runs"].items():
        for stage in ("analyze", "prune"):
            x = r[stage]
            print(f"| {name} | {stage} | {x['wall_s']} s | {x['peak_rss_gb']} GB | {x['stages_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
