"""Dense vs pruned speed where people run models (BENCHMARKS.md §11): llama.cpp (node-llama-cpp, CPU) and
transformers (CPU), prefill tokens/s at a 512-token prompt, greedy decode tokens/s, file size, peak RSS.

    python bench/bench_speed.py build --work /tmp/speed [--docs 40]
    nice -n 0 python bench/bench_speed.py time --work /tmp/speed --out bench/results/speed.json
    python bench/bench_speed.py table bench/results/speed.json          # BENCHMARKS.md §11's tables

``build`` prunes the default model (SmolLM2-135M-Instruct, float32) with the default method (obs + the
least-squares repair) at 20% and 30% of all parameters, with its own per-layer widths (``allocation
default``: a ``deci`` GGUF) and with ``allocation uniform`` (a ``llama`` GGUF), calibrated on ``--docs``
Brown calibration documents x 512 tokens (one calibration shared by the four: this measures speed, not
quality); saves each and the dense model with :func:`fnprune.pruned_io.save_pruned` (float32
safetensors) and exports each as an f16 GGUF with :func:`fnprune.models.export_gguf.export_gguf`.

``time`` runs, in ``--rounds`` rounds, every model in a fresh process per runtime (models in turn inside a
round, so a busy spell of the shared machine spreads over all of them): one warm-up, then ``--repeats``
timed repeats of the same prompt (the first 512 tokens of the first held-out Brown document) and
``--decode`` greedily generated tokens. Prefill tokens/s = 512 / time to the first generated token;
decode tokens/s = generated tokens / their time (one batch-1 step + greedy sampling each). transformers
loads each directory as a user would: ``AutoModelForCausalLM.from_pretrained`` (float32), with
``trust_remote_code`` only where ``pruning.json`` says the directory needs it (per-layer widths). Peak RSS is
the process's (``wait4``), its runtime included (node + llama.cpp, or Python + torch + transformers).
``--threads`` (default 1) for both runtimes. ``os.getloadavg()`` is recorded before and after each
round. Medians with min-max over all timed repeats. The ideal speedup is the dense model's parameter
count over the pruned one's: with tied embeddings every parameter but the norms enters each token's
matrix products once (the LM head is the embedding matrix); attention over the context is not counted.

The result file holds numbers only (no weights, no text).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from backend.serve import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = ROOT / "tools" / "llama" / "gguf_speed.mjs"
CONFIGS = (  # name, target ratio, allocation
    ("dense", None, None),
    ("obs-0.2", 0.2, "default"),
    ("obs-0.3", 0.3, "default"),
    ("obs-uniform-0.2", 0.2, "uniform"),
    ("obs-uniform-0.3", 0.3, "uniform"),
)


def _prompt_ids(tokenizer, n_tokens: int) -> list[int]:
    from fnprune.corpus import load_corpus, split_heldout

    for doc in split_heldout(load_corpus("brown"))[1]:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            return [int(i) for i in ids[:n_tokens]]
    raise SystemExit(f"no held-out Brown document has {n_tokens} tokens")


def build(work: Path, n_docs: int, prompt_tokens: int) -> None:
    import copy

    import torch

    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.models import DEFAULT_MODEL, load_model
    from fnprune.models.export_gguf import export_gguf
    from fnprune.models.mlp import parameter_counts
    from fnprune.models.pruned_io import save_pruned
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.spec import PruningSpec

    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    calibration = Calibration(tok, split_heldout(load_corpus("brown"))[0][:n_docs], 512)
    manifest = {"source_model": DEFAULT_MODEL, "calib_docs": n_docs, "calib_max_tokens": 512,
                "prompt": _prompt_ids(tok, prompt_tokens), "models": {}}
    for name, ratio, allocation in CONFIGS:
        t0 = time.perf_counter()
        pruned = copy.deepcopy(model)
        info = {"source_model": DEFAULT_MODEL}
        if ratio is not None:
            spec = PruningSpec(method="obs", target_ratio=ratio, allocation=allocation)
            outcome = prune_with_networks(pruned, None, spec, calibration)
            info.update(outcome.info())
        model_dir = save_pruned(pruned, tok, work / name, info, overwrite=True)
        gguf = export_gguf(model_dir, work / f"{name}.gguf", out_type="f16", overwrite=True)
        counts = parameter_counts(pruned)
        manifest["models"][name] = {
            "target_ratio": ratio, "allocation": allocation, "method": None if ratio is None else "obs",
            "total_params": counts["total_params"], "mlp_params": counts["mlp_params"],
            "widths_min": min(counts["widths"]), "widths_max": max(counts["widths"]),
            "gguf_architecture": gguf.architecture, "gguf_type": gguf.out_type, "gguf_bytes": gguf.n_bytes,
            "safetensors_bytes": sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")),
            "build_s": time.perf_counter() - t0}
        print(f"{name}: {counts['total_params']:,} parameters, widths {min(counts['widths'])}-"
              f"{max(counts['widths'])}, {gguf.summary()}", flush=True)
        del pruned
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _run_measured(cmd: list[str], request: dict) -> tuple[dict, int]:
    """Run ``cmd`` with ``request`` as JSON on stdin; its JSON reply and its peak RSS in bytes."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                            preexec_fn=die_with_parent)  # stops with this process
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} exited with {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss * 1024


def transformers_worker() -> None:
    """One model in transformers (stdin request as the node script's; stdout the same reply)."""
    request = json.loads(sys.stdin.read())
    import torch
    from transformers import AutoModelForCausalLM

    from fnprune.models.pruned_io import read_pruning_info

    torch.set_num_threads(request["threads"])
    t0 = time.perf_counter()
    # as a user loads it: the stock class (dense, uniform widths) or the directory's remote code (per-layer)
    remote = bool(read_pruning_info(request["model"]).get("trust_remote_code"))
    model = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32, trust_remote_code=remote)
    model.eval()
    load_s = time.perf_counter() - t0
    prompt = torch.tensor([request["prompt"]])

    @torch.inference_mode()
    def once() -> dict:
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        first = time.perf_counter()
        past = out.past_key_values
        for _ in range(request["n_decode"]):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        end = time.perf_counter()
        return {"prefill_s": first - start, "prefill_tokens": prompt.shape[1], "decode_s": end - first,
                "decode_tokens": request["n_decode"]}

    once()  # warm-up
    runs = [once() for _ in range(request["repeats"])]
    print(json.dumps({"architecture": type(model).__name__, "load_s": load_s, "runs": runs}))


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def time_all(work: Path, out: Path, rounds: int, repeats: int, n_decode: int, threads: int,
             runtimes: list[str]) -> None:
    manifest = json.loads((work / "manifest.json").read_text())
    prompt = manifest["prompt"]
    samples = {(name, rt): {"prefill": [], "decode": [], "rss": [], "decoded": []}
               for name in manifest["models"] for rt in runtimes}
    loadavg = []
    for r in range(rounds):
        before = os.getloadavg()
        for name in manifest["models"]:
            for runtime in runtimes:
                if runtime == "llama.cpp":
                    cmd = ["node", str(NODE_SCRIPT)]
                    request = {"model": str(work / f"{name}.gguf")}
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "_transformers"]
                    request = {"model": str(work / name)}
                request.update(prompt=prompt, n_decode=n_decode, repeats=repeats, threads=threads)
                reply, rss = _run_measured(cmd, request)
                s = samples[name, runtime]
                s["rss"].append(rss)
                for run in reply["runs"]:
                    s["prefill"].append(run["prefill_tokens"] / run["prefill_s"])
                    s["decode"].append(run["decode_tokens"] / run["decode_s"])
                    s["decoded"].append(run["decode_tokens"])
                print(f"round {r}: {name} {runtime}: prefill {statistics.median(s['prefill'][-repeats:]):.0f} "
                      f"tok/s, decode {statistics.median(s['decode'][-repeats:]):.1f} tok/s, "
                      f"peak RSS {rss / 2**20:.0f} MiB", flush=True)
        loadavg.append({"round": r, "before": before, "after": os.getloadavg()})
    dense_params = manifest["models"]["dense"]["total_params"]
    results = {}
    for name, m in manifest["models"].items():
        ideal = dense_params / m["total_params"]
        row = {**m, "ideal_speedup": ideal, "gguf_mib": m["gguf_bytes"] / 2**20,
               "safetensors_mib": m["safetensors_bytes"] / 2**20}
        for runtime in runtimes:
            s = samples[name, runtime]
            d = samples["dense", runtime]
            prefill = statistics.median(s["prefill"]) / statistics.median(d["prefill"])
            decode = statistics.median(s["decode"]) / statistics.median(d["decode"])
            row[runtime] = {
                "prefill_tokens_per_s": _summary(s["prefill"]), "decode_tokens_per_s": _summary(s["decode"]),
                "peak_rss_mib": _summary([b / 2**20 for b in s["rss"]]), "decoded_tokens_min": min(s["decoded"]),
                "prefill_speedup": prefill, "decode_speedup": decode,
                "prefill_speedup_of_ideal": prefill / ideal, "decode_speedup_of_ideal": decode / ideal,
                "samples": {"prefill_tokens_per_s": s["prefill"], "decode_tokens_per_s": s["decode"]}}
        results[name] = row
    import torch

    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    report = {"command": " ".join(sys.argv), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                          "python": platform.python_version(),
                                                          "torch": torch.__version__, "node": node,
                                                          "node_llama_cpp": "3.21.1"},
              "settings": {"rounds": rounds, "repeats": repeats, "prompt_tokens": len(prompt),
                           "decode_tokens": n_decode, "threads": threads, "nice": os.nice(0),
                           "transformers_dtype": "float32", "gguf_type": "f16",
                           "calib_docs": manifest["calib_docs"]},
              "loadavg": loadavg, "models": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


def table(path: Path) -> None:
    """BENCHMARKS.md §11's tables from a result file (medians, min-max)."""
    report = json.loads(path.read_text())
    runtimes = [r for r in ("llama.cpp", "transformers") if r in next(iter(report["models"].values()))]
    for runtime in runtimes:
        size = "GGUF f16 MiB" if runtime == "llama.cpp" else "safetensors f32 MiB"
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(f"\n<!-- results: {shown} -->")
        print(f"| {runtime}: model | parameters | ideal speedup | prefill tok/s (512-token prompt), median (min–max) "
              f"| prefill × dense (of ideal) | decode tok/s, median (min–max) | decode × dense (of ideal) | {size} "
              "| peak RSS MiB, median (min–max) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, m in report["models"].items():
            r = m[runtime]
            p, d, rss = r["prefill_tokens_per_s"], r["decode_tokens_per_s"], r["peak_rss_mib"]
            label = name if m["target_ratio"] is None else (
                f"obs {m['target_ratio']:.0%}, {'per-layer widths' if m['allocation'] == 'default' else 'uniform'} "
                f"({m['gguf_architecture']})")
            mib = m["gguf_mib"] if runtime == "llama.cpp" else m["safetensors_mib"]
            print(f"| {label} | {m['total_params']:,} | {m['ideal_speedup']:.3f} "
                  f"| {p['median']:.0f} ({p['min']:.0f}–{p['max']:.0f}) "
                  f"| {r['prefill_speedup']:.3f} ({r['prefill_speedup_of_ideal']:.2f}) "
                  f"| {d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f}) "
                  f"| {r['decode_speedup']:.3f} ({r['decode_speedup_of_ideal']:.2f}) | {mib:.1f} "
                  f"| {rss['median']:.0f} ({rss['min']:.0f}–{rss['max']:.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--docs", type=int, default=40, help="calibration documents (default 40)")
    b.add_argument("--prompt-tokens", type=int, default=512)
    t = sub.add_parser("time")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--decode", type=int, default=64, help="greedily generated tokens per repeat")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--runtimes", default="llama.cpp,transformers")
    tb = sub.add_parser("table", help="print BENCHMARKS.md's tables from a result file")
    tb.add_argument("result", type=Path)
    sub.add_parser("_transformers")
    args = parser.parse_args()
    if args.stage == "build":
        build(args.work, args.docs, args.prompt_tokens)
    elif args.stage == "time":
        time_all(args.work, args.out, args.rounds, args.repeats, args.decode, args.threads,
                 args.runtimes.split(","))
    elif args.stage == "table":
        table(args.result)
    else:
        transformers_worker()


if __name__ == "__main__":
    main()
