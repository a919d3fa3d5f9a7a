"""What :func:`fnprune.evaluation.compare.compare` writes besides ``results.json``: the Markdown table
(``report.md``) and the Plotly chart of perplexity against the fraction removed (``ppl_vs_ratio.html``),
both rendered from the result dict alone."""

from __future__ import annotations

import numpy as np


def _fmt_ppl(r: dict) -> str:
    low, high = r["ci95"]
    return f"{r['ppl']:.2f} [{low:.2f}, {high:.2f}]"


def _fidelity_cell(row: dict) -> str:
    fid = row.get("fidelity")
    if not fid:
        return ""
    corr = [f["correlation"] for f in fid if np.isfinite(f["correlation"])]
    kept = sum(f["n_key_kept"] for f in fid), sum(f["n_key"] for f in fid)
    return (f"{np.median(corr):.3f} / {min(corr):.3f}; {kept[0]} of {kept[1]}" if corr else "")


def markdown_report(result: dict) -> str:
    sets = list(result["rows"][0]["ppl"])
    windows = list(result["rows"][0]["ppl"][sets[0]])
    cols = [f"{name} PPL@{w} [95% CI]" for name in sets for w in windows]
    ref = result.get("reference")
    lines = [f"# Pruning comparison: {result.get('model')} on {result.get('corpus')}", "",
             f"Calibration: {result['n_calib_docs']} documents; evaluated on the {result.get('split', 'test')} split: "
             + ", ".join(f"{k} {v} documents" for k, v in result["eval_sets"].items())
             + f"; perplexity over {result.get('ppl_protocol', 'windows')}, 95% bootstrap intervals over windows. "
             f"Ratio = fraction of all {result['total_params']:,} parameters removed (MLP neurons only)."
             + (f" Every pruned row then had {result['recovery']['epochs']} epoch(s) of recovery by distillation "
                f"(learning rate {result['recovery']['lr']:g})." if result.get("recovery") else ""),
             "" if not ref else f"Paired ratio: PPL / PPL of {ref[0]} ({ref[1]}, {ref[2]}) at the same ratio on the "
             "same windows, with a paired bootstrap 95% interval.",
             "Fidelity: median / worst time-course correlation of the scored networks; their key neurons kept.", "",
             "| ratio | method | allocation | repair | removed (all) | removed (MLP) | " + " | ".join(cols)
             + " | paired ratio | fidelity | calib. error |",
             "|---|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['ratio']:.2f} | {row['method']} | {row['allocation']} | {row['repair']} | | | "
                         + " | ".join("—" for _ in cols) + f" | | | |  <!-- {row['error']} -->")
            continue
        vals = [_fmt_ppl(row["ppl"][name][w]) for name in sets for w in windows]
        pair = row.get("vs_reference", {}).get(sets[0], {}).get(windows[0])
        pair_s = f"{pair['ratio']:.3f} [{pair['low']:.3f}, {pair['high']:.3f}]" if pair else ""
        errs = row.get("repair_errors")
        err_s = (f"{errs['error_bias']:.3f} → {errs['error_repaired']:.3f}" if errs else "")
        lines.append(f"| {row['ratio']:.2f} | {row['method']} | {row['allocation']} | {row['repair']} "
                     f"| {row['removed_fraction']:.1%} | {row['removed_mlp_fraction']:.1%} | " + " | ".join(vals)
                     + f" | {pair_s} | {_fidelity_cell(row)} | {err_s} |")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines += ["", "Failed:"] + [f"- {r['method']} ({r['allocation']}, {r['repair']}) at {r['ratio']:.2f}: "
                                    f"{r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def plotly_chart(result: dict) -> str:
    import plotly.graph_objects as go

    first = list(result["rows"][0]["ppl"])[0]
    window = list(result["rows"][0]["ppl"][first])[0]
    dense = result["rows"][0]["ppl"][first][window]["ppl"]
    fig = go.Figure()
    series: dict[str, list] = {}
    for row in result["rows"][1:]:
        if "error" not in row:
            series.setdefault(f"{row['method']} ({row['allocation']}, {row['repair']})", []).append(row)
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: r["ratio"])
        ys = [r["ppl"][first][window] for r in rows]
        fig.add_trace(go.Scatter(x=[r["ratio"] for r in rows], y=[y["ppl"] for y in ys], mode="lines+markers",
                                 name=name, error_y={"type": "data", "symmetric": False,
                                                     "array": [y["ci95"][1] - y["ppl"] for y in ys],
                                                     "arrayminus": [y["ppl"] - y["ci95"][0] for y in ys]}))
    fig.add_hline(y=dense, line_dash="dot", annotation_text=f"dense {dense:.2f}")
    fig.update_layout(title=f"{first}: perplexity (window {window}) vs fraction of parameters removed",
                      xaxis_title="fraction of all parameters removed", yaxis_title=f"PPL@{window}",
                      yaxis_type="log", template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)
