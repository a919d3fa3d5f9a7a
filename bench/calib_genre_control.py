"""The control for a calibration-size gain on held-out Brown: does it come only from the held-out
documents whose genre the larger calibration set adds? (BENCHMARKS.md §3b, issue 19.4)

    python bench/calib_genre_control.py bench/results/calib_docs_units_brown.json --small 120 --large 240 \
        --out bench/results/calib_docs_genre_control.json

Reads a ``bench_default_choice.py --split test --units-out`` file (per-document NLL of the first 20
held-out Brown documents, in ``split_heldout`` order) and splits those documents by genre: the genres
the first ``--small`` calibration documents already have, and the others. For each ratio it gives the
paired ratio (large / small calibration, 95% bootstrap over documents) on each group and on all.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("units", type=Path)
    parser.add_argument("--small", type=int, default=120)
    parser.add_argument("--large", type=int, default=240)
    parser.add_argument("--method", default="obs")
    parser.add_argument("--ratios", default="0.2,0.3")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.evaluation.compare import paired_ratio

    units = json.loads(args.units.read_text())
    docs = load_corpus("brown")
    calibration, heldout = split_heldout(docs)
    n = len(units["dense"]["unit_nll"])
    labels = [d.label for d in heldout[:n]]
    known = {d.label for d in calibration[:args.small]}
    groups = {"genres of the small calibration": [i for i, g in enumerate(labels) if g in known],
              "genres only the large one has": [i for i, g in enumerate(labels) if g not in known],
              "all": list(range(n))}

    def subset(r: dict, idx: list[int]) -> dict:
        nll, tokens = [r["unit_nll"][i] for i in idx], [r["unit_tokens"][i] for i in idx]
        return {"unit_nll": nll, "unit_tokens": tokens, "ppl": math.exp(sum(nll) / sum(tokens))}

    rows = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        small, large = units[f"{args.method}:{args.small}:{ratio}"], units[f"{args.method}:{args.large}:{ratio}"]
        for name, idx in groups.items():
            pair = paired_ratio(subset(large, idx), subset(small, idx))
            rows.append({"ratio": ratio, "group": name, "n_docs": len(idx),
                         "genres": sorted({labels[i] for i in idx}), "paired_large_over_small": pair})
            print(f"{ratio} {name} ({len(idx)} docs): {pair['ratio']:.3f} [{pair['low']:.3f}, {pair['high']:.3f}]")
    args.out.write_text(json.dumps({"units": str(args.units), "small": args.small, "large": args.large,
                                    "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
