// Screens 6 and 7: pruning progress, dense vs pruned comparison, baselines, generations, downloads.
import { api } from "../api.js";
import { baseLayout, OKABE_ITO, react } from "../charts.js";
import { el, fmtBytes, fmtNum, fmtParams, fmtPct, showError, showNotice } from "../dom.js";
import { analysisDownloads, downloadsList, jobProgress, statusBadge } from "./common.js";

export async function render(root, { id }, ctx) {
  const job = await api(`/api/prunings/${id}`);
  if (!ctx.alive()) return;
  const p = job.params || {};
  root.append(
    el("div.analysis-head",
      el("div.analysis-title",
        el("h1", { text: `Pruning ${id}` }),
        el("p.muted", p.analysis_id ? el("a", { href: `#/analysis/${p.analysis_id}/prune`, text: `from analysis ${p.analysis_id}` }) : null, " ", describe(p), " ", job.status === "succeeded" ? statusBadge(job.status) : null)),
    ),
  );
  if (job.status === "succeeded") return renderResults(root, id, job, ctx);
  if (job.status === "failed" || job.status === "cancelled") {
    const reason = job.status === "failed" ? `This pruning failed: ${job.error || "no reason given"}` : "This pruning was cancelled.";
    if (job.status === "failed") showError(reason);
    root.append(el("section.card", el("p", { text: reason })));
    return;
  }
  const progress = jobProgress("prunings", id, {
    title: "Progress",
    onDone: () => {
      if (ctx.alive()) window.dispatchEvent(new HashChangeEvent("hashchange"));
    },
  });
  root.append(progress.node);
  return progress.stop;
}

function describe(p) {
  const target = p.target_ratio != null ? `target ratio ${fmtPct(p.target_ratio, 0)}` : p.threshold != null ? `|z| ≥ ${p.threshold}` : "default threshold";
  const nets = p.networks ? `${p.networks.length} networks kept` : "all networks kept";
  const opts = [p.bias && "bias compensation", p.uniform && "uniform widths", p.heads && `heads ${p.heads === true ? "25 %" : fmtPct(p.heads, 0)}`].filter(Boolean);
  return `· ${target} · ${nets}${opts.length ? ` · ${opts.join(", ")}` : ""}`;
}

function renderResults(root, id, job, ctx) {
  const r = job.result || {};
  const d = r.dense || {};
  const q = r.pruned || {};
  const analysisId = job.params?.analysis_id;
  const ratio = (a, b) => (a && b ? `${fmtNum(b / a, 2)}×` : "—");
  const rowsSpec = [
    ["Perplexity (held-out)", "ppl", (v) => fmtNum(v, 2)],
    ["Perplexity (128-token windows)", "ppl_128", (v) => fmtNum(v, 2)],
    ["Parameters", "params", fmtParams],
    ["MLP parameters", "mlp_params", fmtParams],
    ["Size", "size_bytes", fmtBytes],
    ["Decoding speed (tokens/s, batch 1)", "tokens_per_s", (v) => fmtNum(v, 1)],
    ["Prefill time (ms)", "prefill_ms", (v) => fmtNum(v, 1)],
    ["Peak memory (RSS)", "peak_rss_bytes", fmtBytes],
  ].filter(([, key]) => d[key] !== undefined || q[key] !== undefined);
  const evaluated = Object.keys(d).length > 0 || Object.keys(q).length > 0;
  const compare = !evaluated ? el("p.muted#compare-table", { text: "The models were not evaluated (evaluation was switched off for this pruning)." }) : el(
    "table.table.compare#compare-table",
    el("thead", el("tr", ["", "Dense", "Pruned", "Pruned / dense"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", rowsSpec.map(([label, key, f]) => el("tr", { dataset: { metric: key } }, el("th", { scope: "row", text: label }), el("td.num", { text: f(d[key]) }), el("td.num", { text: f(q[key]) }), el("td.num", { text: ratio(d[key], q[key]) })))),
  );
  const headline = el(
    "dl.stats.headline",
    el("div", el("dt", { text: "Parameters removed" }), el("dd#ratio-total", { text: fmtPct(r.ratio_total) })),
    r.removed_params !== undefined ? el("div", el("dt", { text: "Removed" }), el("dd", { text: `${fmtParams(r.removed_params)} params` })) : null,
    r.ratio_mlp !== undefined ? el("div", el("dt", { text: "Of the MLPs" }), el("dd", { text: fmtPct(r.ratio_mlp) })) : null,
    r.heads_fraction ? el("div", el("dt", { text: "Heads removed" }), el("dd", { text: `${fmtPct(r.heads_fraction, 0)} of KV groups` })) : null,
    el("div", el("dt", { text: "Dense PPL" }), el("dd#dense-ppl", { text: fmtNum(d.ppl, 2) })),
    el("div", el("dt", { text: "Pruned PPL" }), el("dd#pruned-ppl", { text: fmtNum(q.ppl, 2) })),
    el("div", el("dt", { text: "Size" }), el("dd", { text: `${fmtBytes(d.size_bytes)} → ${fmtBytes(q.size_bytes)}` })),
  );

  const baselines = r.baselines || [];
  const baselineTable = baselines.length
    ? el("table.table#baselines-table",
      el("thead", el("tr", ["Method", "Allocation", "PPL", "Parameters removed"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody",
        el("tr.highlight", el("td", { text: "functional networks (this)" }), el("td", { text: "fn" }), el("td.num", { text: fmtNum(q.ppl, 2) }), el("td.num", { text: fmtPct(r.ratio_total) })),
        baselines.map((b) => el("tr", el("td", { text: b.method }), el("td", { text: b.allocation === "fn" ? "same widths as fn" : "own" }), el("td.num", { text: fmtNum(b.ppl, 2) }), el("td.num", { text: fmtPct(b.ratio_total) })))))
    : el("p.muted", { text: "No baselines were requested." });

  const pplPlot = el("div.plot#ppl-plot");
  const widthPlot = el("div.plot#pruned-widths");

  const gens = r.generations || [];
  const generations = gens.length
    ? el("div.generations#generations", gens.map((g) => el("article.gen",
      el("p.gen-prompt", el("strong", { text: "Prompt: " }), g.prompt),
      el("div.grid-2",
        el("div.gen-col", el("h4", { text: "Dense" }), el("p.gen-text", { text: g.dense })),
        el("div.gen-col", el("h4", { text: "Pruned" }), el("p.gen-text", { text: g.pruned }))))))
    : el("p.muted", { text: "No generations recorded." });

  const snippet = r.load_snippet || "";
  const copy = el("button.btn.btn-ghost", { type: "button", text: "Copy" });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(snippet);
      showNotice("Copied.");
    } catch {
      showError("The browser did not allow copying; select the text and copy it by hand.");
    }
  });
  const downloads = downloadsList([
    {
      path: `/api/prunings/${id}/download/model`,
      filename: `fnprune-${id}-model.zip`,
      label: "Pruned model (zip)",
      note: el("div", el("span", { text: "A Hugging Face model directory. Unzip it, then load it with transformers:" }), el("div.snippet", el("pre", el("code#load-snippet", { text: snippet || "AutoModelForCausalLM.from_pretrained(\"<unzipped folder>\")" })), snippet ? copy : null)),
    },
    { path: `/api/prunings/${id}/download/masks`, filename: `fnprune-${id}-masks.json`, label: "Kept neurons (JSON)", note: "Per layer, the indices of the MLP neurons that were kept; apply them to the dense model to reproduce the pruning." },
    { path: `/api/prunings/${id}/download/report`, filename: `fnprune-${id}-report.html`, label: "Comparison report (HTML)", note: "Self-contained comparison report: perplexity, size, speed, baselines and generations." },
  ]);

  root.append(
    el("section.card", el("h2", { text: "Dense vs pruned" }), headline, compare),
    el("div.grid-2",
      el("section.card", el("h2", { text: "Perplexity" }), pplPlot),
      el("section.card", el("h2", { text: "MLP width per layer" }), widthPlot,
        r.kv_heads ? el("p.muted.small#kv-heads", { text: `KV head groups kept per layer: ${r.kv_heads.join(", ")}` }) : null)),
    el("section.card", el("h2", { text: "Baselines" }), baselineTable),
    el("section.card", el("h2", { text: "Generations side by side" }), generations),
    el("section.card#downloads", el("h2", { text: "Downloads" }), downloads, analysisId ? el("h3", { text: `From analysis ${analysisId}` }) : null, analysisId ? analysisDownloads(analysisId) : null),
  );

  const names = ["dense", "functional networks", ...baselines.map((b) => `${b.method}${b.allocation === "fn" ? " (fn widths)" : ""}`)];
  const ppls = [d.ppl, q.ppl, ...baselines.map((b) => b.ppl)];
  const colors = ["#9aa5b1", OKABE_ITO[0], ...baselines.map((_, i) => OKABE_ITO[(i % 5) + 1])];
  const draws = [
    react(pplPlot, [{ type: "bar", x: names, y: ppls, marker: { color: colors }, text: ppls.map((v) => fmtNum(v, 1)), textposition: "outside", cliponaxis: false, hovertemplate: "%{x}: PPL %{y:.2f}<extra></extra>" }],
      baseLayout({ height: 320, yaxis: { title: { text: "perplexity (lower is better)" }, rangemode: "tozero" }, xaxis: { automargin: true, tickangle: -20 } })),
  ];
  if (r.widths?.length) {
    draws.push(react(widthPlot, [{ type: "bar", x: r.widths.map((_, l) => `L${l}`), y: r.widths, marker: { color: OKABE_ITO[0] }, hovertemplate: "%{x}: %{y} neurons<extra></extra>" }],
      baseLayout({ height: 320, yaxis: { title: { text: "neurons kept" } } })));
  } else {
    widthPlot.replaceChildren(el("p.muted", { text: "No widths reported." }));
  }
  return Promise.all(draws).then(() => undefined).catch((err) => {
    if (ctx.alive()) showError(err);
  });
}
