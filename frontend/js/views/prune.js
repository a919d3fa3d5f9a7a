// Screen 5: choose the networks to preserve and the threshold / target ratio, see the projected
// per-layer widths and size live (POST /preview, debounced), then start a pruning.
// A checked network is a constraint: every one of its key neurons is kept, whatever the method; no
// check means nothing is forced (every network still shapes the scores).
//
// Methods, repairs, ratio bases, their help, the defaults and the methods' rules (e.g. which refuse the
// sequential repair) are the server's (GET /api/options, fnprune.options and fnprune.pruning.methods): nothing
// here copies them. The page is assembled from one function per section: networks (with the guided
// selection), budget, projected model, method, calibration.
import { api, urls } from "../api.js";
import { baseLayout, OKABE_ITO, react } from "../charts.js";
import { clearError, debounce, el, fmtBytes, fmtNum, fmtParams, fmtPct, fmtTime, showError } from "../dom.js";
import { getNetworks, getOptions } from "../store.js";
import { analysisTabs, ownLayer, statusBadge, waitForJob } from "./common.js";
import { protectSection } from "./protect.js";

// One earlier pruning's measured result: method, repair, removed fraction, held-out perplexity vs dense.
function measured(p) {
  const r = p.result;
  if (p.status !== "succeeded" || !r) return null;
  const what = `${r.method} + ${r.repair}, ${fmtNum(100 * r.ratio_total, 1)}% of all parameters removed`;
  const ppl = r.pruned && r.dense ? `: held-out PPL ${fmtNum(r.pruned.ppl, 2)} (${fmtNum(r.pruned.ppl / r.dense.ppl, 2)}× dense ${fmtNum(r.dense.ppl, 2)})` : " (not evaluated)";
  return el("span.measured", { text: ` · ${what}${ppl}` });
}

export async function render(root, { id }, ctx) {
  const job = await api(urls.job("analyses", id));
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "prune", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);
  const [table, options, corpora] = await Promise.all([getNetworks(id), getOptions(), api(urls.corpora())]);
  if (!ctx.alive()) return;
  const comps = [...table.components].sort((a, b) => a.id - b.id);
  const thr = table.threshold ?? options.analysis.threshold;

  let debounced = () => {};
  const changed = () => {
    networks.updateCount();
    budget.refresh();
    debounced();
  };
  const networks = networksSection(id, comps, thr, changed);
  const budget = budgetSection(thr, options, changed);
  const projection = projectionSection(id);
  const method = methodSection(options);
  const calibration = calibrationSection(job, options);
  const protect = protectSection(id, job, corpora, options);

  // ---- the request, the live preview and the start button ---------------------------------------
  const startButton = el("button.btn.btn-primary#start-pruning", { type: "button", text: "Prune the model", "aria-describedby": "prune-blocked" });
  const blockedNote = el("p.blocked#prune-blocked", { role: "status", hidden: true });
  let blockedReason = ""; // why the last preview refused these settings (the Prune button says it)
  const setBlocked = (reason) => {
    blockedReason = reason;
    startButton.disabled = Boolean(reason);
    blockedNote.hidden = !reason;
    blockedNote.textContent = reason ? `Cannot prune with these settings: ${reason}` : "";
  };
  // the request of the current settings, or null after showing why they are unusable
  const requestOrError = () => {
    try {
      return { networks: networks.selection(), ...budget.request() };
    } catch (err) {
      showError(err);
      return null;
    }
  };
  let seq = 0;
  let previewFailed = false;
  async function preview() {
    const mySeq = ++seq;
    const body = requestOrError();
    if (!body) return;
    projection.updating();
    try {
      const p = await api(urls.preview(id), { method: "POST", body });
      if (mySeq !== seq || !ctx.alive()) return;
      if (previewFailed) clearError(); // the settings that failed are gone
      previewFailed = false;
      setBlocked("");
      budget.showReach(p, body.networks ? body.networks.length : 0);
      networks.showKept(p.chosen_networks || []);
      await projection.show(p, body);
    } catch (err) {
      if (mySeq === seq && ctx.alive()) {
        const refused = err.status === 422;
        projection.failed(refused ? `Preview refused: ${err.message}` : "Preview failed: change the networks or the target.");
        previewFailed = true;
        if (refused) setBlocked(err.message);
        showError(`Preview: ${err.message}`);
      }
    }
  }
  debounced = debounce(preview, 300);

  startButton.addEventListener("click", async () => {
    if (blockedReason) return;
    const body = requestOrError();
    if (!body) return;
    const nCalib = calibration.value();
    if (nCalib === null) {
      showError(new Error("Calibration documents: a whole number from 1 to 5000"));
      return;
    }
    const payload = {
      analysis_id: id,
      networks: body.networks,
      threshold: body.threshold,
      target_ratio: body.target_ratio,
      ratio_of: body.ratio_of,
      uniform: body.uniform,
      ...method.request(),
    };
    if (body.protected_layers) payload.protected_layers = body.protected_layers;
    if (nCalib !== calibration.apiDefault) payload.calibration_texts = nCalib;
    try {
      const protectRequest = protect.request();
      if (protectRequest) payload.protect = protectRequest;
    } catch (err) {
      showError(err);
      return;
    }
    startButton.disabled = true;
    try {
      const pj = await api(urls.jobs("prunings"), { method: "POST", body: payload });
      location.hash = `#/pruning/${pj.id}`;
    } catch (err) {
      showError(err);
    } finally {
      startButton.disabled = Boolean(blockedReason);
    }
  });

  const pruneCard = el(
    "section.card",
    el("h2", { text: "Prune" }),
    el("div.options", method.choices, calibration.node, method.evaluate),
    method.baselines,
    protect.node,
    el("div.actions", startButton, blockedNote),
  );
  const pastSlot = el("div");
  root.append(
    el("div.grid-2.prune-layout",
      networks.node,
      el("div",
        el("section.card", el("h2", { text: "Target" }), budget.node),
        projection.node,
        pruneCard)),
    el("section.card", el("h2", { text: "Prunings of this analysis" }),
      el("p.hint", { text: "What earlier choices measured on the held-out documents: the impact to expect from a similar choice." }), pastSlot),
  );
  changed();

  try {
    const prunings = (await api(urls.jobs("prunings"))).filter((p) => p.params?.analysis_id === id);
    if (!ctx.alive()) return;
    pastSlot.replaceChildren(
      prunings.length
        ? el("ul.plain#past-prunings", prunings.map((p) => el("li", { dataset: { id: p.id } },
          el("a", { href: `#/pruning/${p.id}`, text: `Pruning ${p.id}` }), " ", statusBadge(p.status),
          el("span.muted.small", { text: ` ${fmtTime(p.created_at)}` }), measured(p))))
        : el("p.muted", { text: "None yet." }),
    );
  } catch (err) {
    showError(err);
  }
  return protect.stop;
}

// ---- networks to preserve: the checklist, quick and guided selections -----------------------------
function networksSection(id, comps, thr, onChange) {
  const boxes = new Map();
  const rows = comps.map((c) => {
    const box = el("input", { type: "checkbox", id: `keep-${c.id}`, value: String(c.id), "aria-label": `Keep every key neuron of network ${c.id}` });
    box.addEventListener("change", onChange);
    boxes.set(c.id, box);
    return el(
      "tr",
      el("td", box),
      el("td", el("label", { for: `keep-${c.id}` }, el("a", { href: `#/analysis/${id}/network/${c.id}`, text: `Network ${c.id}` })),
        c.name ? el("div.muted.small.net-row-name", { text: c.name }) : null),
      el("td", { text: ownLayer(c) ?? "all" }),
      el("td.num", { text: String(c.n_key) }),
      el("td.num.kept-cell", { id: `kept-${c.id}`, text: "" }),
      el("td.num", { text: fmtNum(c.stability) }),
      el("td", el(`span.badge.label-${c.label || "unknown"}`, { text: c.label || "unknown" })),
      el("td", { text: c.top_genre || "—" }),
    );
  });
  const selectedCount = el("span.muted#selected-count");
  const setChecked = (pred) => {
    for (const c of comps) boxes.get(c.id).checked = pred(c);
    onChange();
  };
  const topN = el("input#top-n", { type: "number", min: "1", max: String(comps.length), value: String(Math.min(10, comps.length)) });
  const nSignal = comps.filter((c) => c.label === "signal").length;
  const quick = el(
    "div.quick-actions",
    { role: "group", "aria-label": "Quick selections" },
    el("button.btn.btn-secondary", { type: "button", text: "All", onclick: () => setChecked(() => true) }),
    el("button.btn.btn-secondary", { type: "button", text: "None (nothing forced)", onclick: () => setChecked(() => false) }),
    el("button.btn.btn-secondary#select-signal", { type: "button", text: `All signal-labelled (${nSignal})`, onclick: () => setChecked((c) => c.label === "signal") }),
    el("span.group",
      el("button.btn.btn-secondary#select-top", {
        type: "button",
        text: "Top N by stability",
        onclick: () => {
          const n = Math.max(1, Number(topN.value) || 1);
          const top = new Set([...comps].sort((a, b) => (b.stability ?? 0) - (a.stability ?? 0) || a.id - b.id).slice(0, n).map((c) => c.id));
          setChecked((c) => top.has(c.id));
        },
      }),
      el("label.sr-only", { for: "top-n", text: "N" }),
      topN),
  );
  const checklist = el(
    "div.table-scroll",
    el("table.table#network-checklist",
      el("thead", el("tr", ["Keep all key", "Network", "Layer", "Key neurons", "Key kept", "Stability", "Label", "Top genre"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", rows)),
  );
  const keepHint = el("p.hint#keep-hint", {
    text: `A check keeps every key neuron (|z| ≥ ${fmtNum(thr, 1)}) of that network, whatever the method; the method's score fills the rest of the budget. `
      + "No check: nothing is forced, and all networks still shape the scores.",
  });
  return {
    node: el("section.card", el("h2", { text: "Networks to preserve" }), keepHint, quick, guidedSelection(comps, topN, setChecked), selectedCount, checklist),
    // no check = no constraint (null); every check is a constraint, "All" included
    selection: () => {
      const chosen = comps.filter((c) => boxes.get(c.id).checked).map((c) => c.id);
      return chosen.length ? chosen : null;
    },
    updateCount: () => {
      const n = comps.filter((c) => boxes.get(c.id).checked).length;
      selectedCount.textContent = `${n} of ${comps.length} networks selected`;
    },
    // per network: how many of its key neurons the preview keeps
    showKept: (chosenNets) => {
      const byId = new Map(chosenNets.map((c) => [c.id, c]));
      for (const c of comps) {
        const k = byId.get(c.id);
        document.getElementById(`kept-${c.id}`)?.replaceChildren(k ? `${k.n_kept} of ${k.n_key}` : "");
      }
    },
  };
}

// Guided selection: by what the networks respond to (genre, a word of their name or top tokens).
function guidedSelection(comps, topN, setChecked) {
  const genres = [...new Set(comps.map((c) => c.top_genre).filter(Boolean))].sort();
  const genrePick = el("select#genre-pick", { "aria-label": "Genre" },
    genres.map((g) => el("option", { value: g, text: `${g} (${comps.filter((c) => c.top_genre === g).length})` })));
  const wordPick = el("input#word-pick", { type: "search", placeholder: "e.g. was", "aria-label": "Word in the network's name or among its top tokens" });
  const guidedNote = el("span.muted.small#guided-note", { "aria-live": "polite" });
  const pickBy = (pred, what) => {
    const hits = comps.filter(pred);
    setChecked((c) => hits.includes(c));
    guidedNote.textContent = hits.length ? `${hits.length} network${hits.length === 1 ? "" : "s"} ${what}.` : `No network ${what}.`;
  };
  const byWord = el("button.btn.btn-secondary#select-word", {
    type: "button",
    text: "Networks named with or active on the word",
    onclick: () => {
      const w = wordPick.value.trim().toLowerCase();
      if (!w) {
        guidedNote.textContent = "Type a word first.";
        return;
      }
      const re = new RegExp(`(^|[^\\p{L}\\p{N}])${w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}($|[^\\p{L}\\p{N}])`, "u");
      // the word in the network's name, or one of the texts of its 30 most active tokens
      pickBy((c) => re.test(String(c.name || "").toLowerCase()) || re.test(String(c.auto_name || "").toLowerCase())
        || (c.top_words || []).some((t) => t.toLowerCase() === w), `named with “${wordPick.value.trim()}” or active on it`);
    },
  });
  wordPick.addEventListener("keydown", (e) => {
    if (e.key === "Enter") byWord.click();
  });
  return el(
    "div.quick-actions.guided",
    { role: "group", "aria-label": "Select by function" },
    el("span.group",
      el("button.btn.btn-secondary#select-genre", {
        type: "button",
        text: "Top N most selective for",
        disabled: genres.length === 0,
        onclick: () => {
          const g = genrePick.value;
          const n = Math.max(1, Number(topN.value) || 1);
          const top = new Set(comps.filter((c) => c.top_genre === g)
            .sort((a, b) => (b.genre_selectivity ?? 0) - (a.genre_selectivity ?? 0) || a.id - b.id).slice(0, n).map((c) => c.id));
          pickBy((c) => top.has(c.id), `most selective for ${g}`);
        },
      }),
      genrePick),
    el("span.group", byWord, wordPick),
    guidedNote,
  );
}

// ---- budget: threshold or target ratio (of which parameters), protected layers, uniform ------------
function budgetSection(thr, options, onChange) {
  const bases = Object.fromEntries(options.ratio_bases.map((b) => [b.name, b]));
  const ratio = options.pruning.target_ratio;
  const modeThreshold = el("input", { type: "radio", name: "target", value: "threshold", id: "target-threshold" });
  const modeRatio = el("input", { type: "radio", name: "target", value: "ratio", id: "target-ratio", checked: true });
  const thrSlider = el("input#threshold-slider", { type: "range", min: "1", max: "8", step: "0.1", value: String(thr) });
  const thrOut = el("output", { for: "threshold-slider", text: `|z| ≥ ${thr.toFixed(1)}` });
  const ratioSlider = el("input#ratio-slider", { type: "range", min: "0.05", max: "0.9", step: "0.01", value: String(ratio), "aria-label": "Fraction of ALL model parameters removed" });
  const ratioOut = el("output", { for: "ratio-slider", text: "" });
  const ratioOf = el("select#ratio-of", { "aria-label": "What the target ratio is a fraction of" },
    options.ratio_bases.map((b) => el("option", { value: b.name, text: `of ${b.help}`, selected: b.name === options.pruning.ratio_of })));
  const protectedInput = el("input#protected-layers", { type: "text", placeholder: "e.g. 0, 1, 29", inputmode: "numeric", "aria-describedby": "protected-hint" });
  const uniform = el("input#uniform", { type: "checkbox" });
  const maxRatio = el("p.hint#max-ratio", { "aria-live": "polite" });
  for (const input of [modeThreshold, modeRatio, ratioOf, uniform]) input.addEventListener("change", onChange);
  for (const input of [thrSlider, ratioSlider, protectedInput]) input.addEventListener("input", onChange);
  const parseProtected = () => {
    const text = protectedInput.value.trim();
    if (!text) return null;
    const nums = text.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (nums.some((n) => !Number.isInteger(n) || n < 0)) throw new Error(`Protected layers must be whole layer numbers separated by commas, not "${text}".`);
    return nums;
  };
  return {
    node: el(
      "div.target",
      el("fieldset",
        el("legend", { text: "What to keep" }),
        el("div.target-row", el("label.check", { for: "target-threshold" }, modeThreshold, " key neurons at threshold"), el("div.range", thrSlider, thrOut)),
        el("div.target-row", el("label.check", { for: "target-ratio" }, modeRatio, " target pruning ratio: fraction removed"), el("div.range", ratioSlider, ratioOut), ratioOf),
        maxRatio),
      el("div.field", el("label", { for: "protected-layers", text: "Protected layers (never pruned)" }), protectedInput, el("p.hint#protected-hint", { text: "Comma-separated layer numbers; empty = the server's default (listed in the preview)." })),
      el("label.check", { for: "uniform" }, uniform, " same width in every layer (uniform allocation)"),
    ),
    request: () => ({
      threshold: modeThreshold.checked ? Number(thrSlider.value) : null,
      target_ratio: modeRatio.checked ? Number(ratioSlider.value) : null,
      ratio_of: ratioOf.value,
      protected_layers: parseProtected(),
      uniform: uniform.checked,
    }),
    refresh: () => {
      thrSlider.disabled = !modeThreshold.checked;
      ratioSlider.disabled = !modeRatio.checked;
      thrOut.textContent = `|z| ≥ ${Number(thrSlider.value).toFixed(1)}`;
      ratioOut.textContent = `${Math.round(100 * Number(ratioSlider.value))} % of ${bases[ratioOf.value]?.label ?? ratioOf.value}`;
    },
    // the largest reachable ratio of each base, with this choice
    showReach: (p, nChosen) => {
      const reach = p.max_ratio || { all: p.max_ratio_total };
      maxRatio.textContent = p.max_ratio_total != null
        ? `With ${nChosen ? "these networks' key neurons" : "nothing forced"} and the protected layers kept, at most ` +
          Object.entries(reach).map(([k, v]) => `${fmtPct(v)} of ${bases[k]?.label ?? k}`).join(", or ") + " can be removed."
        : "";
    },
  };
}

// ---- the projected model: the preview's numbers and per-layer widths -------------------------------
function projectionSection(id) {
  const previewStats = el("dl.stats#preview-stats", el("div", el("dt", { text: "Preview" }), el("dd", { text: "…" })));
  const widthPlot = el("div.plot#width-plot");
  const previewState = el("p.muted.small#preview-state", { "aria-live": "polite" });
  const chosenList = el("div#chosen-kept", { "aria-live": "polite" });
  const stale = (yes) => [previewStats, widthPlot, chosenList].forEach((n) => n.classList.toggle("stale", yes));
  return {
    node: el("section.card", el("h2", { text: "Projected model" }), previewState, previewStats, widthPlot,
      el("h3.small-head", { text: "Chosen networks" }), chosenList),
    updating: () => (previewState.textContent = "Updating preview…"),
    failed: (message) => {
      previewState.textContent = message;
      stale(true);
    },
    show: async (p, body) => {
      const nChosen = body.networks ? body.networks.length : 0;
      previewState.textContent = nChosen
        ? `Preview for ${nChosen} chosen network${nChosen === 1 ? "" : "s"} (every key neuron kept) at |z| ≥ ${fmtNum(p.threshold, 2)}.`
        : `Preview with no network chosen (nothing forced) at |z| ≥ ${fmtNum(p.threshold, 2)}.`;
      const forced = p.forced_per_layer || [];
      const nForced = forced.reduce((a, b) => a + b, 0);
      previewStats.replaceChildren(
        el("div", el("dt", { text: "Threshold" }), el("dd#pv-threshold", { text: `|z| ≥ ${fmtNum(p.threshold, 2)}` })),
        el("div", el("dt", { text: "Parameters removed" }), el("dd#pv-removed", { text: fmtParams(p.removed_params) })),
        el("div", el("dt", { text: "Parameters kept" }), el("dd#pv-total", { text: `${fmtParams(p.total_params - p.removed_params)} of ${fmtParams(p.total_params)}` })),
        el("div", el("dt", { text: "Removed: fraction of ALL parameters" }), el("dd#pv-ratio", { text: fmtPct(p.ratio_total) })),
        el("div", el("dt", { text: "Removed: fraction of MLP parameters" }), el("dd#pv-ratio-mlp", { text: fmtPct(p.ratio_mlp) })),
        el("div", el("dt", { text: "Forced in: key neurons of the chosen networks" }), el("dd#pv-forced", { text: nChosen ? String(nForced) : "none" })),
        el("div", el("dt", { text: "Size (float32)" }), el("dd#pv-size", { text: fmtBytes(p.size_bytes) })),
        el("div", el("dt", { text: "Protected layers" }), el("dd#pv-protected", { text: (p.protected_layers || []).length ? p.protected_layers.join(", ") : "none" })),
      );
      const chosenNets = p.chosen_networks || [];
      chosenList.replaceChildren(chosenNets.length
        ? el("ul.plain.kept-list", chosenNets.map((c) => el("li", { dataset: { id: String(c.id) }, class: c.n_kept < c.n_key ? "short" : null },
          el("a", { href: `#/analysis/${id}/network/${c.id}`, text: `Network ${c.id}` }), ` (L${c.layer}): key neurons kept: ${c.n_kept} of ${c.n_key}`)))
        : el("p.muted.small", { text: "No network chosen: nothing is forced in; the method's score (shaped by all networks) fills the whole budget." }));
      stale(false);
      const layers = p.widths.map((_, l) => `L${l}`);
      const prot = new Set(p.protected_layers || []);
      await react(
        widthPlot,
        [
          { type: "bar", name: "original", x: layers, y: p.original_widths, marker: { color: "#cbd2d9" }, hovertemplate: "%{x}: %{y} neurons originally<extra></extra>" },
          { type: "bar", name: "kept", x: layers, y: p.widths.map((w, l) => (prot.has(l) ? null : w)), marker: { color: OKABE_ITO[0] }, hovertemplate: "%{x}: %{y} neurons kept<extra></extra>" },
          { type: "bar", name: "protected (not pruned)", x: layers, y: p.widths.map((w, l) => (prot.has(l) ? w : null)), marker: { color: OKABE_ITO[2] }, hovertemplate: "%{x}: protected, %{y} neurons<extra></extra>", showlegend: prot.size > 0 },
          { type: "bar", name: "forced in (key neurons of the chosen networks)", x: layers, y: forced, width: 0.45, marker: { color: OKABE_ITO[1] }, hovertemplate: "%{x}: %{y} key neurons of the chosen networks, always kept<extra></extra>", visible: nForced > 0, showlegend: nForced > 0 },
        ],
        baseLayout({ height: 320, barmode: "overlay", title: { text: "Projected MLP width per layer", x: 0, xanchor: "left", font: { size: 14 } }, yaxis: { title: { text: "neurons" } }, legend: { orientation: "h", y: -0.2 } }),
      );
    },
  };
}

// ---- method: how neurons are chosen, the repair, attention heads, evaluation, baselines ----------
function methodSection(options) {
  const defaults = options.pruning;
  const methods = new Map(options.methods.map((m) => [m.name, m]));
  const ordered = [...options.methods].sort((a, b) => (b.name === defaults.method) - (a.name === defaults.method));
  const methodLabel = (m) => `${m.label}${m.baseline ? " (baseline)" : ""}${m.name === defaults.method ? " (recommended)" : ""}`;
  const method = el("select#opt-method", { "aria-describedby": "method-help" },
    ordered.map((m) => el("option", { value: m.name, text: methodLabel(m), title: m.help, selected: m.name === defaults.method })));
  const methodHelp = el("p.hint#method-help");
  const repairs = new Map(options.repairs.map((r) => [r.name, r]));
  const repair = el("select#opt-repair", { "aria-describedby": "repair-help" },
    options.repairs.map((r) => el("option", { value: r.name, text: `${r.label}${r.name === defaults.repair ? " (recommended)" : ""}`, title: r.help, selected: r.name === defaults.repair })));
  const repairHelp = el("p.hint#repair-help");
  const sequential = el("input#opt-sequential", { type: "checkbox" });
  const refusingSequential = options.methods.filter((m) => m.refuses.sequential).map((m) => m.name);
  const describe = () => {
    const m = methods.get(method.value);
    methodHelp.textContent = m.name === defaults.method ? `${m.help}. Recommended: ${defaults.method_reason}.` : `${m.help}.`;
    repairHelp.textContent = repairs.get(repair.value).help;
    // the API refuses sequential with another repair, and with the methods that refuse it (obs: its
    // selection and repair are one fit)
    const refused = m.refuses.sequential;
    sequential.disabled = repair.value !== defaults.sequential_repair || Boolean(refused);
    sequential.title = refused ? `not with ${m.name}: ${refused}` : "";
    if (sequential.disabled) sequential.checked = false;
  };
  method.addEventListener("change", describe);
  repair.addEventListener("change", describe);
  describe();
  const heads = el("input#opt-heads", { type: "checkbox" });
  const headsFraction = el("input#opt-heads-fraction", { type: "number", min: "0.05", max: "0.95", step: "0.05", value: String(defaults.heads_fraction), disabled: true, "aria-label": "Fraction of KV head groups to remove" });
  heads.addEventListener("change", () => (headsFraction.disabled = !heads.checked));
  const recoverEpochs = el("input#opt-recover-epochs", { type: "number", min: "0", max: String(defaults.recover_max_epochs), step: "1", value: String(defaults.recover_epochs), "aria-describedby": "recover-help" });
  const evaluate = el("input#opt-evaluate", { type: "checkbox", checked: true });
  const baselineBoxes = options.methods.filter((m) => m.baseline)
    .map((m) => el("label.check", el("input", { type: "checkbox", name: "baseline", value: m.name }), ` ${m.label}`));
  const sequentialNote = `(one calibration pass per pruned layer: slower; only with ${repairs.get(defaults.sequential_repair)?.label ?? defaults.sequential_repair}`
    + (refusingSequential.length ? `, not with ${refusingSequential.join(", ")})` : ")");
  return {
    choices: [
      el("label", { for: "opt-method" }, "Method: how neurons are chosen inside a layer ", method),
      methodHelp,
      el("label", { for: "opt-repair" }, "Repair of the pruned layers ", repair),
      repairHelp,
      el("label.check", { for: "opt-sequential" }, sequential, el("span", "sequential: calibrate each layer's least-squares fit on the model whose lower layers are already pruned and repaired ", el("span.muted.small", { text: sequentialNote }))),
      el("div.inline-row", el("label", { for: "opt-recover-epochs" }, "Recovery by distillation: epochs "), recoverEpochs,
        el("span.muted.small#recover-help", { text: `0 = off. Trains the pruned MLP weights toward the dense model's next-token distributions on the calibration documents, at learning rate ${defaults.recover_lr} (each epoch costs a forward pass of the dense model and a forward and backward pass of the pruned one over the calibration documents, and it holds a copy of the dense model; with evaluation on, the comparison without repair and each baseline get the same recovery)` })),
      el("div.inline-row", el("label.check", { for: "opt-heads" }, heads, " also prune attention heads: remove a fraction"), headsFraction, el("span.muted.small", { text: "of the KV head groups of each unprotected layer (LLaMA-style attention)" })),
    ],
    evaluate: el("label.check", { for: "opt-evaluate" }, evaluate, " evaluate: perplexity, speed, generations and network fidelity of dense and pruned models, and the pruning without repair ", el("span.muted.small", { text: "(slower)" })),
    baselines: el("fieldset.baselines", el("legend", { text: "Compare with baselines at the same ratio (the chosen networks' key neurons are kept for them too)" }), el("div.checks", baselineBoxes)),
    request: () => ({
      method: method.value,
      repair: repair.value,
      sequential: sequential.checked,
      heads: heads.checked ? Number(headsFraction.value) : false,
      recover_epochs: Number(recoverEpochs.value),
      evaluate: evaluate.checked,
      baselines: baselineBoxes.map((b) => b.querySelector("input")).filter((b) => b.checked).map((b) => b.value),
    }),
  };
}

// ---- calibration: how many documents the scores and the repair read ----------------------------------
// The API's default is the analysis' number of texts but at least the library's (options.pruning); after
// a quick analysis the field proposes fewer, to stay quick, and says why. It sends what differs from the
// API's default.
function calibrationSection(job, options) {
  const defaults = options.pruning;
  const analysisTexts = job.params?.n_texts ?? 0;
  const apiDefault = Math.max(analysisTexts, defaults.calibration_texts);
  const quickAnalysis = analysisTexts < defaults.quick_analysis_texts;
  const proposed = quickAnalysis ? defaults.quick_calibration_texts : apiDefault;
  const calibDocs = el("input#opt-calib-docs", { type: "number", min: "1", max: "5000", step: "1", value: String(proposed), "aria-describedby": "calib-help" });
  const tokens = Math.max(job.params?.max_tokens ?? 0, defaults.calibration_tokens);
  const help = `× ${tokens} tokens of the analysis' corpus, for the scores and the repair. ` + (quickAnalysis
    ? `A quick analysis (${analysisTexts} texts): ${defaults.quick_calibration_texts} to stay quick; the library's default of ${defaults.calibration_texts} gives a better pruned model (the Quick demo measured 1.47× dense perplexity instead of 1.54×) and took about 2 minutes more on 2 cores (BENCHMARKS.md §9).`
    : `Default ${apiDefault}: the analysis' own number, at least ${defaults.calibration_texts}; fewer is faster and worse.`);
  return {
    node: el("div.inline-row", el("label", { for: "opt-calib-docs" }, "Calibration documents "), calibDocs, el("span.muted.small#calib-help", { text: help })),
    apiDefault,
    // the number asked for, or null when it is not a whole number in [1, 5000]
    value: () => {
      const n = Number(calibDocs.value);
      return Number.isInteger(n) && n >= 1 && n <= 5000 ? n : null;
    },
  };
}
