// Screens 6 and 7: pruning progress, dense vs pruned comparison, the chosen networks and their
// fidelity, the repair on/off comparison, baselines, generations, downloads.
import { api, urls } from "../api.js";
import { baseLayout, OKABE_ITO, react } from "../charts.js";
import { el, fmtBytes, fmtDuration, fmtNum, fmtParams, fmtPct, showError, showNotice } from "../dom.js";
import { analysisDownloads, downloadsList, jobProgress, statusBadge } from "./common.js";
import { protectResult } from "./protect.js";

export async function render(root, { id }, ctx) {
  const job = await api(urls.job("prunings", id));
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

const REPAIR_NAMES = { lstsq: "least-squares repair", bias: "mean-bias repair", none: "no repair" };

function describe(p) {
  const target = p.target_ratio != null ? `target ${fmtPct(p.target_ratio, 0)} of all parameters` : p.threshold != null ? `|z| ≥ ${p.threshold}` : "default threshold";
  const nets = p.networks ? `${p.networks.length} chosen network${p.networks.length === 1 ? "" : "s"} kept` : "no network forced";
  const repair = REPAIR_NAMES[p.repair || "lstsq"] + (p.sequential ? " (sequential)" : "");
  const opts = [p.method || "fn-flap", repair, p.bias && "bias compensation", p.uniform && "uniform widths", p.heads && `heads ${p.heads === true ? "25 %" : fmtPct(p.heads, 0)}`, p.recover_epochs && `recovery ${p.recover_epochs} epoch${p.recover_epochs === 1 ? "" : "s"}`].filter(Boolean);
  return `· ${target} · ${nets} · ${opts.join(", ")}`;
}

// The networks chosen as constraints, with how many of their key neurons survived.
function chosenSection(r, analysisId) {
  const chosen = r.chosen_networks || [];
  const body = chosen.length
    ? el("ul.plain.kept-list#chosen-networks", chosen.map((c) => el("li", { dataset: { id: String(c.id) }, class: c.n_kept < c.n_key ? "short" : null },
      analysisId ? el("a", { href: `#/analysis/${analysisId}/network/${c.id}`, text: `Network ${c.id}` }) : `Network ${c.id}`,
      ` (L${c.layer}): key neurons kept: ${c.n_kept} of ${c.n_key}`)))
    : el("p.muted#chosen-networks", { text: r.chosen_networks === undefined ? "Not recorded for this pruning (made by an older version)."
      : "No network was chosen: nothing was forced in; the method's score (shaped by all networks) filled the budget." });
  return el("section.card", el("h2", { text: "Chosen networks" }), body);
}

// Per network: does it still do what it did? (fnprune.evaluation.fidelity on the held-out documents)
function fidelitySection(r, analysisId) {
  const fid = r.fidelity || [];
  const plot = el("div.plot#fidelity-plot");
  if (!fid.length) {
    return { node: el("section.card", el("h2", { text: "Network fidelity" }), el("p.muted#fidelity-table", { text: "Not measured (evaluation was switched off for this pruning)." })), plot: null, fid };
  }
  const scope = r.fidelity_scope === "chosen" ? "the chosen networks" : `the ${r.fidelity_scope || "listed"} networks (no network was chosen)`;
  const caption = el("p.caption#fidelity-caption", {
    text: `For ${scope}, dense and pruned model read the same held-out documents. Correlation: Pearson r of the network's time course `
      + "in the dense and in the pruned model (computed from its map over the neurons that remain; 1 = unchanged). Output change: relative change of "
      + "the layer's MLP output, on the tokens where the network is most active in the dense model (top) and on every held-out token (all); 0 = unchanged.",
  });
  const table = el("div.table-scroll", el("table.table#fidelity-table",
    el("thead", el("tr", ["Network", "Layer", "Time-course correlation", "Output change (top tokens)", "Output change (all tokens)", "Key neurons kept"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", fid.map((f) => el("tr", { dataset: { id: String(f.id) } },
      el("td", analysisId ? el("a", { href: `#/analysis/${analysisId}/network/${f.id}`, text: `Network ${f.id}` }) : `Network ${f.id}`),
      el("td.num", { text: String(f.layer) }),
      el("td.num.fid-corr", { text: fmtNum(f.correlation, 3) }),
      el("td.num.fid-top", { text: fmtPct(f.output_change_top) }),
      el("td.num.fid-all", { text: fmtPct(f.output_change_all) }),
      el("td.num.fid-kept", { text: `${f.n_key_kept} of ${f.n_key}` }))))));
  const node = el("section.card", el("h2", { text: "Network fidelity after pruning" }), caption, table, plot);
  return { node, plot, fid };
}

function drawFidelity(plot, fid) {
  const names = fid.map((f) => `N${f.id}`);
  return react(plot, [
    { type: "bar", name: "time-course correlation", x: names, y: fid.map((f) => f.correlation), marker: { color: OKABE_ITO[0] }, width: fid.length < 4 ? 0.3 : undefined,
      customdata: fid.map((f) => [f.layer, f.output_change_top, f.output_change_all, f.n_key_kept, f.n_key]),
      hovertemplate: "network %{x} (L%{customdata[0]})<br>r = %{y:.3f}<br>output change: %{customdata[1]:.1%} top tokens, %{customdata[2]:.1%} all<br>key neurons kept: %{customdata[3]} of %{customdata[4]}<extra></extra>" },
    { type: "scatter", mode: "markers", name: "output change (top tokens)", x: names, y: fid.map((f) => f.output_change_top), yaxis: "y2", marker: { color: OKABE_ITO[5], symbol: "diamond", size: 8 },
      hovertemplate: "network %{x}: output change %{y:.1%} on its top tokens<extra></extra>" },
  ], baseLayout({
    height: 300,
    margin: { l: 60, r: 70, t: 40, b: 40 },
    title: { text: "Correlation (bars) and output change (◆) per network", x: 0, xanchor: "left", font: { size: 13 } },
    xaxis: { type: "category", automargin: true },
    yaxis: { title: { text: "time-course r" }, range: [Math.min(0, ...fid.map((f) => f.correlation)), 1.05] },
    yaxis2: { title: { text: "output change" }, overlaying: "y", side: "right", tickformat: ".0%", rangemode: "tozero", showgrid: false },
    legend: { orientation: "h", y: -0.25 },
  }));
}

// Repair on/off: held-out perplexity with and without, and the layers' output error on calibration tokens.
function repairSection(r) {
  const rc = r.repair_comparison;
  const errs = r.repair_errors;
  const parts = [];
  if (rc) {
    parts.push(el("table.table#repair-table",
      el("thead", el("tr", ["Pruned model", "Held-out PPL"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody",
        el("tr.highlight", { dataset: { repair: r.repair || "lstsq" } }, el("th", { scope: "row", text: `with ${REPAIR_NAMES[r.repair || "lstsq"]} (this model)` }), el("td.num#ppl-repaired", { text: fmtNum(rc.repaired_ppl, 2) })),
        el("tr", { dataset: { repair: rc.unrepaired_repair } }, el("th", { scope: "row", text: `without it (${REPAIR_NAMES[rc.unrepaired_repair] || rc.unrepaired_repair})` }), el("td.num#ppl-unrepaired", { text: fmtNum(rc.unrepaired_ppl, 2) })))));
  }
  if (errs) {
    parts.push(el("p.caption", { text: `Mean relative output error of the ${errs.layers ? errs.layers.length : ""} pruned layers on the calibration tokens (0 = the dense layer's output):` }),
      el("dl.stats#repair-errors",
        el("div", el("dt", { text: "no repair" }), el("dd#err-pruned", { text: fmtPct(errs.error_pruned) })),
        el("div", el("dt", { text: "mean bias" }), el("dd#err-bias", { text: fmtPct(errs.error_bias) })),
        el("div", el("dt", { text: "least squares" }), el("dd#err-repaired", { text: fmtPct(errs.error_repaired) }))));
  }
  const rec = r.recovery;
  if (rec) {
    parts.push(el("p#recovery", { text: `Then recovery by distillation: ${rec.epochs} epoch${rec.epochs === 1 ? "" : "s"} over ${rec.documents} calibration documents (${rec.steps} steps, learning rate ${rec.lr}), training the MLP weights toward the dense model's next-token distributions: KL ${fmtNum(rec.kl_first, 4)} → ${fmtNum(rec.kl_last, 4)} nats per token, ${fmtDuration(rec.seconds)}.${rc ? " Both rows above include it." : ""}` }));
  }
  if (!parts.length) {
    parts.push(el("p.muted", { text: r.repair === "none" ? "No repair was applied to this pruning." : "No repair comparison was recorded (it needs evaluation and the least-squares repair)." }));
  }
  return el("section.card#repair", el("h2", { text: "Repair of the pruned layers" }), ...parts);
}

// Per genre: did preserving the chosen networks protect that kind of text? (per-document protocol)
function genreSection(r) {
  const rows = r.ppl_by_genre || [];
  if (!rows.length) return null;
  const body = rows.map((g) => el("tr", { dataset: { genre: g.genre } },
    el("th", { scope: "row", text: g.genre }), el("td.num", { text: String(g.n_docs) }),
    el("td.num", { text: fmtNum(g.dense, 2) }), el("td.num", { text: fmtNum(g.pruned, 2) }),
    el("td.num", { text: `${fmtNum(g.pruned / g.dense, 2)}×` })));
  return el("section.card#genres", el("h2", { text: "Held-out perplexity per genre" }),
    el("p.caption", { text: "Each held-out document scored alone on its first 512 tokens, pooled per genre (label); few documents per genre make these numbers noisy." }),
    el("div.table-scroll", el("table.table#genre-table",
      el("thead", el("tr", ["Genre", "Documents", "Dense PPL", "Pruned PPL", "Pruned / dense"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", body))));
}

function renderResults(root, id, job, ctx) {
  const r = job.result || {};
  const d = r.dense || {};
  const q = r.pruned || {};
  const analysisId = job.params?.analysis_id;
  const ratio = (a, b) => (a && b ? `${fmtNum(b / a, 2)}×` : "—");
  const rowsSpec = [
    ["Perplexity (held-out, first 512 tokens of each document)", "ppl", (v) => fmtNum(v, 2)],
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
  const thisName = r.method || "fn-flap";
  const baselineTable = baselines.length
    ? el("table.table#baselines-table",
      el("thead", el("tr", ["Method", "Allocation", "Repair", "PPL", "Parameters removed"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody",
        el("tr.highlight", el("td", { text: `${thisName} (this pruning)` }), el("td", { text: allocationName(r.allocation) }), el("td", { text: REPAIR_NAMES[r.repair] || "—" }), el("td.num", { text: fmtNum(q.ppl, 2) }), el("td.num", { text: fmtPct(r.ratio_total) })),
        baselines.map((b) => el("tr", { dataset: { name: baselineName(b) } }, el("td", { text: baselineName(b) }), el("td", { text: allocationName(b.allocation) }), el("td", { text: REPAIR_NAMES[b.repair] || "—" }), el("td.num", { text: fmtNum(b.ppl, 2) }), el("td.num", { text: fmtPct(b.ratio_total) })))))
    : el("p.muted", { text: "No baselines were requested." });
  // how the baselines' budget was set (the method's MLP neurons, no heads): stated, not implied
  const baselineBudget = baselines.length && r.baseline_budget
    ? el("p.muted.small#baseline-budget", { text: `Budget of the baselines: ${r.baseline_budget.description} (${r.baseline_budget.mlp_neurons_removed} neurons).` })
    : null;
  // every decision the server took for this request (default target, fewer calibration documents, ...)
  const notes = (r.notes || []).length
    ? el("ul.small#pruning-notes", r.notes.map((n) => el("li", { text: n })))
    : null;

  const pplPlot = el("div.plot#ppl-plot");
  const widthPlot = el("div.plot#pruned-widths");

  const gens = r.generations || [];
  const generations = gens.length
    ? el("div.generations#generations", gens.map((g) => el("article.gen",
      el("p.gen-prompt", el("strong", { text: "Prompt: " }), g.prompt),
      el("div.grid-2",
        el("div.gen-col", el("h4", { text: "Dense" }), genText(g.dense)),
        el("div.gen-col", el("h4", { text: "Pruned" }), genText(g.pruned))))))
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
      path: urls.download("prunings", id, "model"),
      filename: `fnprune-${id}-model.zip`,
      label: "Pruned model (zip)",
      note: el("div", el("span", { text: "A Hugging Face model directory. Unzip it, then load it with transformers:" }), el("div.snippet", el("pre", el("code#load-snippet", { text: snippet || "AutoModelForCausalLM.from_pretrained(\"<unzipped folder>\")" })), snippet ? copy : null)),
    },
    {
      path: urls.gguf(id),
      filename: `fnprune-${id}-model-f16.gguf`,
      label: "GGUF (llama.cpp, f16)",
      note: el("span", "One file for llama.cpp, Ollama, LM Studio or node-llama-cpp (architecture llama when every layer has the same width, deci otherwise), written on the first download. Or run ", el("code", { text: "fnprune export-gguf MODEL_DIR out.gguf --type q8_0" }), " on the unzipped folder."),
    },
    { path: urls.download("prunings", id, "masks"), filename: `fnprune-${id}-masks.json`, label: "Kept neurons (JSON)", note: "Per layer, the indices of the MLP neurons that were kept; apply them to the dense model to reproduce the pruning." },
    { path: urls.download("prunings", id, "report"), filename: `fnprune-${id}-report.html`, label: "Comparison report (HTML)", note: "Self-contained comparison report: perplexity, size, speed, baselines and generations." },
  ]);

  const fidelity = fidelitySection(r, analysisId);
  root.append(
    el("section.card", el("h2", { text: "Dense vs pruned" }), headline, compare,
      r.dense_cached ? el("p.muted.small#dense-cached", { text: "The dense model's numbers were measured once for this model and these held-out documents, and reused." }) : null,
      r.calibration ? el("p.muted.small#calibration", { text: `Pruning scores and repair calibrated on ${calibrationTexts(r.calibration)} × ${r.calibration.tokens_per_text} tokens (not held out); perplexity on the first 512 tokens of each held-out document.` }) : null,
      notes),
    ...[protectResult(r)].filter(Boolean),
    chosenSection(r, analysisId),
    fidelity.node,
    repairSection(r),
    ...[genreSection(r)].filter(Boolean),
    el("div.grid-2",
      el("section.card", el("h2", { text: "Perplexity" }), pplPlot),
      el("section.card", el("h2", { text: "MLP width per layer" }), widthPlot,
        r.kv_heads ? el("p.muted.small#kv-heads", { text: `KV head groups kept per layer: ${r.kv_heads.join(", ")}` }) : null)),
    el("section.card", el("h2", { text: "Baselines" }), baselineTable, baselineBudget),
    el("section.card", el("h2", { text: "Generations side by side" }), generations),
    el("section.card#downloads", el("h2", { text: "Downloads" }), downloads, analysisId ? el("h3", { text: `From analysis ${analysisId}` }) : null, analysisId ? analysisDownloads(analysisId) : null),
  );

  const names = ["dense", `${thisName} (this)`, ...baselines.map(baselineName)];
  const ppls = [d.ppl, q.ppl, ...baselines.map((b) => b.ppl)];
  const colors = ["#9aa5b1", OKABE_ITO[0], ...baselines.map((_, i) => OKABE_ITO[(i % 5) + 1])];
  const draws = [
    react(pplPlot, [{ type: "bar", x: names, y: ppls, marker: { color: colors }, text: ppls.map((v) => fmtNum(v, 1)), textposition: "outside", cliponaxis: false, hovertemplate: "%{x}: PPL %{y:.2f}<extra></extra>" }],
      baseLayout({ height: 320, yaxis: { title: { text: "perplexity (lower is better)" }, rangemode: "tozero" }, xaxis: { automargin: true, tickangle: -20 } })),
  ];
  if (fidelity.plot) draws.push(drawFidelity(fidelity.plot, fidelity.fid));
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

// "40 documents", "(of 120 requested: the corpus has no more)", or with calibration mixing
// "40 documents (36 of the calibration corpus, 4 of the protected text)"
function calibrationTexts(c) {
  const mixed = c.protected_texts || 0;
  if (mixed > 0) return `${c.texts} documents (${c.texts - mixed} of the calibration corpus, ${mixed} of the protected text)`;
  const fewer = c.requested_texts > c.texts ? ` (of ${c.requested_texts} requested: the corpus has no more)` : "";
  return `${c.texts} documents${fewer}`;
}

function baselineName(b) {
  return b.name || `${b.method}${b.allocation === "networks" || b.allocation === "fn" ? " (networks' widths)" : ""}`;
}

function allocationName(a) {
  return { networks: "networks' widths", fn: "networks' widths", own: "own", uniform: "uniform", unresolved: "unresolved energy" }[a] || a || "—";
}

function genText(text) {
  return text && text.trim() ? el("p.gen-text", { text }) : el("p.gen-text.gen-empty", { text: "(nothing generated)" });
}
