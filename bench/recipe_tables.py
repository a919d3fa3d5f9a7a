"""Markdown tables for BENCHMARKS.md §3 from ``bench/bench_recipe.py``'s results (no model needed).

Usage: ``python bench/recipe_tables.py bench/results/recipe``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _ppl(cell: dict) -> str:
    return f"{cell['ppl']:.2f} [{cell['ci95'][0]:.1f}, {cell['ci95'][1]:.1f}]"


def _pair(row: dict, corpus: str) -> str:
    p = row.get("vs_reference", {}).get(corpus, {}).get("512")
    return f"{p['ratio']:.3f} [{p['low']:.3f}, {p['high']:.3f}]" if p else "reference" if row.get("ref") else ""


def _fid(row: dict) -> str:
    fid = row.get("fidelity") or []
    corr = [f["correlation"] for f in fid if f["correlation"] == f["correlation"]]
    if not corr:
        return ""
    kept = sum(f["n_key_kept"] for f in fid), sum(f["n_key"] for f in fid)
    change = np.median([f["output_change_top"] for f in fid])
    return f"{np.median(corr):.3f} / {min(corr):.3f}; {change:.3f}; {kept[0]} of {kept[1]}"


def table(result: dict) -> str:
    corpora = list(result["rows"][0]["ppl"])
    dense = {c: result["rows"][0]["ppl"][c]["512"]["ppl"] for c in corpora}
    ref = result.get("reference")
    head = ["ratio", "method", "allocation", "repair", "removed (all)"]
    for c in corpora:
        head += [f"{c} PPL@512 [95% CI]", f"{c} × dense"]
    if ref:
        head += [f"{c} paired ratio to {ref[0]} ({ref[1]}, {ref[2]})" for c in corpora]
    head += ["fidelity: median / worst r; median output change (top tokens); key kept", "calib. error bias → lstsq"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['ratio']} | {row['method']} | {row['allocation']} | {row['repair']} | "
                         f"failed: {row['error']} |")
            continue
        row["ref"] = ref and (row["method"], row["allocation"], row["repair"]) == tuple(ref)
        cells = [f"{row['ratio']:.2f}", row["method"], row["allocation"], row["repair"], f"{row['removed_fraction']:.1%}"]
        for c in corpora:
            cells += [_ppl(row["ppl"][c]["512"]), f"{row['ppl'][c]['512']['ppl'] / dense[c]:.2f}×"]
        if ref:
            cells += [_pair(row, c) if row["method"] != "dense" else "" for c in corpora]
        errs = row.get("repair_errors")
        cells += [_fid(row), f"{errs['error_bias']:.3f} → {errs['error_repaired']:.3f}" if errs else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chosen_vs_free(out: Path) -> None:
    """Paired ratio of obs with the 20 networks chosen to obs without a choice (same documents)."""
    from fnprune.evaluation.compare import paired_ratio

    paths = [out / s / "results.json" for s in ("default-chosen", "default-test")]
    if not all(p.exists() for p in paths):
        return
    chosen, test = (json.loads(p.read_text()) for p in paths)

    def row(result):
        return next(r for r in result["rows"] if r["method"] == "obs" and r["allocation"] == "own"
                    and r["repair"] == "lstsq" and abs(r["ratio"] - 0.2) < 1e-9)
    a, b = row(chosen)["ppl"]["brown"]["512"], row(test)["ppl"]["brown"]["512"]
    p = paired_ratio(a, b)
    print(f"\nobs at 0.2, the 20 networks chosen / no choice (held-out Brown, paired): "
          f"{p['ratio']:.4f} [{p['low']:.4f}, {p['high']:.4f}]")


def main() -> None:
    out = Path(sys.argv[1])
    for stage in ("validation", "validation2", "test", "unconstrained", "chosen", "default-test", "default-chosen"):
        path = out / stage / "results.json"
        if path.exists():
            result = json.loads(path.read_text())
            print(f"\n### {stage}: {result['eval_sets']} ({result['split']} split)\n")
            print(table(result))
    chosen_vs_free(out)
    if (out / "timings.json").exists():
        print("\n" + (out / "timings.json").read_text())


if __name__ == "__main__":
    main()
