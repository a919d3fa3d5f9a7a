// Screen 5: choose the networks to preserve and the threshold / target ratio, see the projected
// per-layer widths and size live (POST /preview, debounced), then start a pruning.
import { api } from "../api.js";
import { baseLayout, OKABE_ITO, react } from "../charts.js";
import { clearError, debounce, el, fmtBytes, fmtNum, fmtParams, fmtPct, fmtTime, showError } from "../dom.js";
import { getNetworks } from "../store.js";
import { analysisTabs, ownLayer, statusBadge } from "./common.js";
import { waitForJob } from "./overview.js";

const BASELINES = [
  ["random", "random"],
  ["magnitude", "magnitude"],
  ["wanda-sp", "Wanda-SP"],
  ["flap", "FLAP"],
];

export async function render(root, { id }, ctx) {
  const job = await api(`/api/analyses/${id}`);
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "prune", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);
  const table = await getNetworks(id);
  if (!ctx.alive()) return;
  const comps = [...table.components].sort((a, b) => a.id - b.id);

  // ---- network checklist ------------------------------------------------------------------
  const boxes = new Map();
  const rows = comps.map((c) => {
    const box = el("input", { type: "checkbox", checked: true, id: `keep-${c.id}`, value: String(c.id), "aria-label": `Preserve network ${c.id}` });
    boxes.set(c.id, box);
    return el(
      "tr",
      el("td", box),
      el("td", el("label", { for: `keep-${c.id}` }, el("a", { href: `#/analysis/${id}/network/${c.id}`, text: `Network ${c.id}` }))),
      el("td", { text: ownLayer(c) ?? "all" }),
      el("td.num", { text: String(c.n_key) }),
      el("td.num", { text: fmtNum(c.stability) }),
      el("td", el(`span.badge.label-${c.label || "unknown"}`, { text: c.label || "unknown" })),
      el("td", { text: c.top_genre || "—" }),
    );
  });
  const selectedCount = el("span.muted#selected-count");
  const setChecked = (pred) => {
    for (const c of comps) boxes.get(c.id).checked = pred(c);
    changed();
  };
  const topN = el("input#top-n", { type: "number", min: "1", max: String(comps.length), value: String(Math.min(10, comps.length)) });
  const nSignal = comps.filter((c) => c.label === "signal").length;
  const quick = el(
    "div.quick-actions",
    { role: "group", "aria-label": "Quick selections" },
    el("button.btn.btn-secondary", { type: "button", text: "All", onclick: () => setChecked(() => true) }),
    el("button.btn.btn-secondary", { type: "button", text: "None", onclick: () => setChecked(() => false) }),
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
      el("thead", el("tr", ["Keep", "Network", "Layer", "Key neurons", "Stability", "Label", "Top genre"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", rows)),
  );

  // ---- target -----------------------------------------------------------------------------
  const thr = table.threshold ?? 3;
  const modeThreshold = el("input", { type: "radio", name: "target", value: "threshold", id: "target-threshold", checked: true });
  const modeRatio = el("input", { type: "radio", name: "target", value: "ratio", id: "target-ratio" });
  const thrSlider = el("input#threshold-slider", { type: "range", min: "1", max: "8", step: "0.1", value: String(thr) });
  const thrOut = el("output", { for: "threshold-slider", text: `|z| ≥ ${thr.toFixed(1)}` });
  const ratioSlider = el("input#ratio-slider", { type: "range", min: "0.05", max: "0.9", step: "0.01", value: "0.3", disabled: true });
  const ratioOut = el("output", { for: "ratio-slider", text: "30 %" });
  const protectedInput = el("input#protected-layers", { type: "text", placeholder: "e.g. 0, 1, 29", inputmode: "numeric", "aria-describedby": "protected-hint" });
  const uniform = el("input#uniform", { type: "checkbox" });
  const targetBox = el(
    "div.target",
    el("fieldset",
      el("legend", { text: "What to keep" }),
      el("div.target-row", el("label.check", { for: "target-threshold" }, modeThreshold, " key neurons at threshold"), el("div.range", thrSlider, thrOut)),
      el("div.target-row", el("label.check", { for: "target-ratio" }, modeRatio, " target pruning ratio (MLP parameters removed)"), el("div.range", ratioSlider, ratioOut))),
    el("div.field", el("label", { for: "protected-layers", text: "Protected layers (never pruned)" }), protectedInput, el("p.hint#protected-hint", { text: "Comma-separated layer numbers; empty = the server's default (listed in the preview)." })),
    el("label.check", { for: "uniform" }, uniform, " same width in every layer (uniform allocation)"),
  );

  // ---- preview ----------------------------------------------------------------------------
  const previewStats = el("dl.stats#preview-stats", el("div", el("dt", { text: "Preview" }), el("dd", { text: "…" })));
  const widthPlot = el("div.plot#width-plot");
  const previewState = el("p.muted.small#preview-state", { "aria-live": "polite" });

  const parseProtected = () => {
    const text = protectedInput.value.trim();
    if (!text) return null;
    const parts = text.split(/[\s,;]+/).filter(Boolean);
    const nums = parts.map(Number);
    if (nums.some((n) => !Number.isInteger(n) || n < 0)) throw new Error(`Protected layers must be whole layer numbers separated by commas, not "${text}".`);
    return nums;
  };
  const selection = () => {
    const chosen = comps.filter((c) => boxes.get(c.id).checked).map((c) => c.id);
    return chosen.length === comps.length ? null : chosen;
  };
  const request = () => ({
    networks: selection(),
    threshold: modeThreshold.checked ? Number(thrSlider.value) : null,
    target_ratio: modeRatio.checked ? Number(ratioSlider.value) : null,
    protected_layers: parseProtected(),
    uniform: uniform.checked,
  });

  let seq = 0;
  let previewFailed = false;
  async function preview() {
    const mySeq = ++seq;
    let body;
    try {
      body = request();
    } catch (err) {
      showError(err);
      return;
    }
    if (body.networks && body.networks.length === 0) {
      previewState.textContent = "No network selected: choose at least one network to preserve.";
      return;
    }
    previewState.textContent = "Updating preview…";
    try {
      const p = await api(`/api/analyses/${id}/preview`, { method: "POST", body });
      if (mySeq !== seq || !ctx.alive()) return;
      if (previewFailed) clearError(); // the settings that failed are gone
      previewFailed = false;
      previewState.textContent = `Preview for ${body.networks ? body.networks.length : comps.length} networks at |z| ≥ ${fmtNum(p.threshold, 2)}.`;
      previewStats.replaceChildren(
        el("div", el("dt", { text: "Threshold" }), el("dd#pv-threshold", { text: `|z| ≥ ${fmtNum(p.threshold, 2)}` })),
        el("div", el("dt", { text: "Parameters removed" }), el("dd#pv-removed", { text: fmtParams(p.removed_params) })),
        el("div", el("dt", { text: "Parameters kept" }), el("dd#pv-total", { text: `${fmtParams(p.total_params - p.removed_params)} of ${fmtParams(p.total_params)}` })),
        el("div", el("dt", { text: "Pruning ratio (total)" }), el("dd#pv-ratio", { text: fmtPct(p.ratio_total) })),
        el("div", el("dt", { text: "Pruning ratio (MLP)" }), el("dd#pv-ratio-mlp", { text: fmtPct(p.ratio_mlp) })),
        el("div", el("dt", { text: "Size (float32)" }), el("dd#pv-size", { text: fmtBytes(p.size_bytes) })),
        el("div", el("dt", { text: "Protected layers" }), el("dd#pv-protected", { text: (p.protected_layers || []).length ? p.protected_layers.join(", ") : "none" })),
      );
      previewStats.classList.remove("stale");
      widthPlot.classList.remove("stale");
      const layers = p.widths.map((_, l) => `L${l}`);
      const prot = new Set(p.protected_layers || []);
      await react(
        widthPlot,
        [
          { type: "bar", name: "original", x: layers, y: p.original_widths, marker: { color: "#cbd2d9" }, hovertemplate: "%{x}: %{y} neurons originally<extra></extra>" },
          { type: "bar", name: "kept", x: layers, y: p.widths.map((w, l) => (prot.has(l) ? null : w)), marker: { color: OKABE_ITO[0] }, hovertemplate: "%{x}: %{y} neurons kept<extra></extra>" },
          { type: "bar", name: "protected (not pruned)", x: layers, y: p.widths.map((w, l) => (prot.has(l) ? w : null)), marker: { color: OKABE_ITO[2] }, hovertemplate: "%{x}: protected, %{y} neurons<extra></extra>", showlegend: prot.size > 0 },
        ],
        baseLayout({ height: 300, barmode: "overlay", title: { text: "Projected MLP width per layer", x: 0, xanchor: "left", font: { size: 14 } }, yaxis: { title: { text: "neurons" } }, legend: { orientation: "h", y: -0.2 } }),
      );
    } catch (err) {
      if (mySeq === seq && ctx.alive()) {
        previewState.textContent = "Preview failed: change the networks or the target.";
        previewFailed = true;
        previewStats.classList.add("stale");
        widthPlot.classList.add("stale");
        showError(`Preview: ${err.message}`);
      }
    }
  }
  const debounced = debounce(preview, 300);
  function changed() {
    const n = comps.filter((c) => boxes.get(c.id).checked).length;
    selectedCount.textContent = `${n} of ${comps.length} networks selected`;
    thrSlider.disabled = !modeThreshold.checked;
    ratioSlider.disabled = !modeRatio.checked;
    thrOut.textContent = `|z| ≥ ${Number(thrSlider.value).toFixed(1)}`;
    ratioOut.textContent = `${Math.round(100 * Number(ratioSlider.value))} %`;
    debounced();
  }

  // ---- prune options and start ------------------------------------------------------------
  const method = el("select#opt-method",
    el("option", { value: "fn-flap", text: "fn-flap (recommended): the networks' per-layer widths, FLAP score within each layer, bias compensation" }),
    el("option", { value: "fn", text: "fn (paper): keep every key neuron of the chosen networks" }));
  const bias = el("input#opt-bias", { type: "checkbox" });
  const heads = el("input#opt-heads", { type: "checkbox" });
  const headsFraction = el("input#opt-heads-fraction", { type: "number", min: "0.05", max: "0.95", step: "0.05", value: "0.25", disabled: true, "aria-label": "Fraction of KV head groups to remove" });
  heads.addEventListener("change", () => (headsFraction.disabled = !heads.checked));
  const evaluate = el("input#opt-evaluate", { type: "checkbox", checked: true });
  const baselineBoxes = BASELINES.map(([value, label]) => el("label.check", el("input", { type: "checkbox", name: "baseline", value }), ` ${label}`));
  const startButton = el("button.btn.btn-primary#start-pruning", { type: "button", text: "Prune the model" });
  startButton.addEventListener("click", async () => {
    let body;
    try {
      body = request();
    } catch (err) {
      showError(err);
      return;
    }
    if (body.networks && body.networks.length === 0) {
      showError("Choose at least one network to preserve before pruning.");
      return;
    }
    const payload = {
      analysis_id: id,
      networks: body.networks,
      threshold: body.threshold,
      target_ratio: body.target_ratio,
      method: method.value,
      bias: bias.checked,
      uniform: body.uniform,
      heads: heads.checked ? Number(headsFraction.value) : false,
      evaluate: evaluate.checked,
      baselines: [...document.querySelectorAll('input[name="baseline"]:checked')].map((b) => b.value),
    };
    if (body.protected_layers) payload.protected_layers = body.protected_layers;
    startButton.disabled = true;
    try {
      const pj = await api("/api/prunings", { method: "POST", body: payload });
      location.hash = `#/pruning/${pj.id}`;
    } catch (err) {
      showError(err);
    } finally {
      startButton.disabled = false;
    }
  });
  const options = el(
    "section.card",
    el("h2", { text: "Prune" }),
    el("div.options",
      el("label", { for: "opt-method" }, "Method ", method),
      el("label.check", { for: "opt-bias" }, bias, " bias compensation ", el("span.muted.small", { text: "(fold the mean of removed neurons into the output bias)" })),
      el("div.inline-row", el("label.check", { for: "opt-heads" }, heads, " also prune attention heads: remove a fraction"), headsFraction, el("span.muted.small", { text: "of the KV head groups of each unprotected layer (LLaMA-style attention)" })),
      el("label.check", { for: "opt-evaluate" }, evaluate, " evaluate: perplexity, speed and generations of dense and pruned models ", el("span.muted.small", { text: "(slower)" }))),
    el("fieldset.baselines", el("legend", { text: "Compare with baselines at the same ratio" }), el("div.checks", baselineBoxes)),
    el("div.actions", startButton),
  );

  const pastSlot = el("div");
  root.append(
    el("div.grid-2.prune-layout",
      el("section.card", el("h2", { text: "Networks to preserve" }), quick, selectedCount, checklist),
      el("div",
        el("section.card", el("h2", { text: "Target" }), targetBox),
        el("section.card", el("h2", { text: "Projected model" }), previewState, previewStats, widthPlot),
        options)),
    el("section.card", el("h2", { text: "Prunings of this analysis" }), pastSlot),
  );
  const form = root.querySelector(".prune-layout");
  form.addEventListener("change", (e) => {
    if (e.target.name !== "baseline" && e.target !== bias && e.target !== heads && e.target !== headsFraction && e.target !== evaluate) changed();
  });
  thrSlider.addEventListener("input", changed);
  ratioSlider.addEventListener("input", changed);
  protectedInput.addEventListener("input", changed);
  changed();

  try {
    const prunings = (await api("/api/prunings")).filter((p) => p.params?.analysis_id === id);
    if (!ctx.alive()) return;
    pastSlot.replaceChildren(
      prunings.length
        ? el("ul.plain", prunings.map((p) => el("li", el("a", { href: `#/pruning/${p.id}`, text: `Pruning ${p.id}` }), " ", statusBadge(p.status), el("span.muted.small", { text: ` ${fmtTime(p.created_at)}` }))))
        : el("p.muted", { text: "None yet." }),
    );
  } catch (err) {
    showError(err);
  }
}
