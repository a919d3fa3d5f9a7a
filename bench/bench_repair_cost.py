"""What the least-squares repair and obs cost on the default model (BENCHMARKS.md §3b): the
calibration pass without second moments (what FLAP + bias needs), with them (FLAP + lstsq) and with
the residual-weighted ones only (obs); pruning with the mean bias, with the repair, and with obs
(its greedy selection of every layer + the repair).

Usage: ``python bench/bench_repair_cost.py [--ratio 0.2] [--docs 120]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--docs", type=int, default=120)
    args = parser.parse_args()

    import resource

    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.models.loading import load_model
    from fnprune.pruning.baselines import plan_keep
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.spec import PruningSpec
    from fnprune.pruning.statistics import collect_down_input_stats
    from fnprune.pruning.surgery import prune_model

    model, tok = load_model("smollm2-135m")
    calib = split_heldout(load_corpus("brown"))[0][:args.docs]
    out = {"docs": len(calib), "max_tokens": 512, "ratio": args.ratio}
    t0 = time.perf_counter()
    plain = collect_down_input_stats(model, tok, calib, 512)
    out["calibration_plain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = collect_down_input_stats(model, tok, calib, 512, second_moments=True)
    out["calibration_second_moments_s"] = time.perf_counter() - t0
    calibration = Calibration(tok, calib, 512)   # what prune_with_networks collects for obs
    t0 = time.perf_counter()
    calibration.down_stats(model, second_moments=False, weighted=True)
    out["calibration_weighted_s"] = time.perf_counter() - t0
    keep = plan_keep(model, "flap", args.ratio, stats=plain)
    for name, kwargs in (("bias", {"bias": plain}), ("lstsq", {"repair": full})):
        pruned = copy.deepcopy(model)
        t0 = time.perf_counter()
        prune_model(pruned, keep, **kwargs)
        out[f"prune_{name}_s"] = time.perf_counter() - t0
        del pruned
    pruned = copy.deepcopy(model)
    t0 = time.perf_counter()
    prune_with_networks(pruned, None, PruningSpec(method="obs", target_ratio=args.ratio), calibration)
    out["prune_obs_s"] = time.perf_counter() - t0
    del pruned
    out["repair_extra_s"] = (out["calibration_second_moments_s"] - out["calibration_plain_s"]
                             + out["prune_lstsq_s"] - out["prune_bias_s"])
    out["obs_extra_s"] = (out["calibration_weighted_s"] - out["calibration_plain_s"]
                          + out["prune_obs_s"] - out["prune_bias_s"])
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
