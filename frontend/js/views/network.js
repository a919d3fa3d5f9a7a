// Screen 4: one network in detail — its name (editable), thresholded mosaic (functional atlas or
// neuron index layout), time course, histogram, top tokens in context, mean activity per genre, and
// "what does this network do?" (views/ablation.js).
import { api, urls } from "../api.js";
import { baseLayout, combineSignals, DIVERGING, drawMosaic, getLayout, layoutSelect, OKABE_ITO, react } from "../charts.js";
import { decodeArray } from "../decode.js";
import { debounce, el, fmtInt, fmtNum, showError, showNotice } from "../dom.js";
import { getNetwork, getNetworks } from "../store.js";
import { ablationPanel } from "./ablation.js";
import { analysisTabs, labelSelect, ownLayer, waitForJob } from "./common.js";

export async function render(root, { id, k }, ctx) {
  const job = await api(urls.job("analyses", id));
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "gallery", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);

  const [table, first, firstLayout] = await Promise.all([getNetworks(id), getNetwork(id, k), getLayout(id)]);
  if (!ctx.alive()) return;
  let layout = firstLayout;
  const byId = new Map(table.components.map((c) => [c.id, c]));
  const detail = first;
  const comp = table.components.find((c) => c.id === k) || { id: k, label: detail.label, layer: detail.layer };
  const ids = table.components.map((c) => c.id).sort((a, b) => a - b);
  const pos = ids.indexOf(k);
  const prev = pos > 0 ? ids[pos - 1] : null;
  const next = pos >= 0 && pos < ids.length - 1 ? ids[pos + 1] : null;

  const values = decodeArray(detail.map);
  const loadedThreshold = detail.threshold ?? table.threshold;
  const maxAbs = () => {
    let m = 0;
    for (const v of values) m = Math.max(m, Math.abs(v));
    return m;
  };
  const peak = maxAbs();

  // ---- header: number, name (automatic from the top tokens, or the user's) --------------------
  const autoName = detail.auto_name ?? comp.auto_name ?? "";
  const nameInput = el("input#network-name", { type: "text", maxlength: "80", value: comp.name ?? detail.name ?? "", placeholder: autoName || "a name", "aria-label": `Name of network ${k}` });
  const nameHint = el("span.muted.small#network-name-hint");
  const showNameHint = () => (nameHint.textContent = nameInput.value && nameInput.value !== autoName ? `named by you · automatic: “${autoName}”` : "named after its top-activating tokens");
  showNameHint();
  const saveName = async () => {
    const value = nameInput.value.trim();
    try {
      const reply = await api(urls.labels(id), { method: "PUT", body: { names: { [String(k)]: value } } });
      const name = reply?.names?.[String(k)] || autoName;
      nameInput.value = name;
      comp.name = name; // the cached table serves the gallery, select list and overview hover
      detail.name = name;
      showNameHint();
      showNotice(`Network ${k} named “${name}”.`);
    } catch (err) {
      showError(err);
    }
  };
  nameInput.addEventListener("change", saveName);
  const head = el(
    "section.card.net-head",
    el(
      "div.net-head-row",
      el("h2#network-title", { text: `Network ${k}` }),
      el("span.muted", { text: ownLayer(detail) !== null ? `layer ${detail.layer}` : "spans all layers" }),
      el("label.net-name-edit", el("span.sr-only", { text: "Name" }), nameInput, nameHint),
      el("span.spacer"),
      el("label.inline-label", { text: "Label " }, labelSelect(id, comp, (v) => (detail.label = v))),
      el("nav.pager", { "aria-label": "Other networks" },
        prev !== null ? el("a.btn.btn-secondary", { href: `#/analysis/${id}/network/${prev}`, text: `← Network ${prev}` }) : null,
        next !== null ? el("a.btn.btn-secondary", { href: `#/analysis/${id}/network/${next}`, text: `Network ${next} →` }) : null),
    ),
    el(
      "dl.stats",
      el("div", el("dt", { text: "Key neurons" }), el("dd#net-nkey", { text: fmtInt(comp.n_key) })),
      el("div", el("dt", { text: "Peak |z|" }), el("dd", { text: fmtNum(comp.peak_z ?? peak, 1) })),
      el("div", el("dt", { text: "Stability" }), el("dd#net-stability", { text: fmtNum(detail.stability ?? comp.stability) })),
      comp.reproduced !== null && comp.reproduced !== undefined
        ? el("div", el("dt", { text: "Seed check", title: "Other seeds in which this network's map came back (|corr| ≥ 0.9)" }),
          el("dd#net-seeds", { text: `back in ${comp.reproduced} of ${table.check_seeds} seeds` }))
        : null,
      el("div", el("dt", { text: "Top genre" }), el("dd", { text: comp.top_genre ? `${comp.top_genre} (${fmtNum(comp.genre_selectivity)})` : "—" })),
    ),
  );

  // ---- mosaic with threshold --------------------------------------------------------------
  const sliderMax = Math.max(1, Math.ceil(Math.max(peak, loadedThreshold) * 10) / 10);
  const thr0 = Math.min(loadedThreshold, sliderMax);
  const slider = el("input#z-threshold", { type: "range", min: "0", max: String(sliderMax), step: "0.1", value: String(thr0), "aria-describedby": "z-threshold-out" });
  const sliderOut = el("output#z-threshold-out", { for: "z-threshold", text: `|z| ≥ ${thr0.toFixed(1)}` });
  const signalSelect = el(
    "select#signal-view",
    el("option", { value: "each", text: "each signal (one slice per layer and signal)" }),
    el("option", { value: "max", text: "strongest signal per neuron" }),
  );
  const mosaic = el("div.plot.mosaic#network-mosaic");
  const timePlot = el("div.plot#time-course");
  const histPlot = el("div.plot#histogram");
  const aboveCount = el("p.muted.small#above-count");
  const layoutChoice = layoutSelect(async (name) => {
    try {
      layout = await getLayout(id, name);
      if (ctx.alive()) await drawMap();
    } catch (err) {
      showError(err);
    }
  });
  const regionOf = (layer) => (s, i) => {
    const net = layout.network[layer]?.[i];
    if (!net) return "region: background (in no network)";
    const c = byId.get(net - 1);
    return net - 1 === k ? "region: this network" : `region: network ${net - 1}${c?.name ? ` “${c.name}”` : ""}`;
  };

  const drawMap = () => {
    const thr = Number(slider.value);
    sliderOut.textContent = `|z| ≥ ${thr.toFixed(1)}`;
    const map = detail.map;
    const nL = map.layers.length;
    const nS = map.signals.length;
    let slices;
    let labels;
    let sliceLayers; // the layer of each slice, for its layout
    if (signalSelect.value === "max" || nS === 1) {
      slices = nS === 1 ? values : combineSignals(values, nL, nS, map.width);
      labels = map.layers.map((l) => `L${l}`);
      sliceLayers = map.layers;
    } else {
      slices = values;
      labels = map.layers.flatMap((l) => map.signals.map((s) => `L${l} ${s}`));
      sliceLayers = map.layers.flatMap((l) => map.signals.map(() => l));
    }
    mosaic.dataset.layout = layout.name;
    let above = 0;
    for (const v of slices) if (Math.abs(v) >= thr) above++;
    const vmax = Math.max(thr, maxAbs()) || 1;
    if (histPlot.isConnected) drawHistogram(histPlot, detail.histogram, thr).catch(() => {});
    aboveCount.textContent = `${fmtInt(above)} of ${fmtInt(slices.length)} neuron-signal cells at |z| ≥ ${thr.toFixed(1)}; below the threshold shown white, grey between slices. Blue: negative z, orange: positive z.`;
    return drawMosaic(mosaic, slices, {
      sliceLabels: labels,
      width: map.width,
      grid: map.grid,
      positions: sliceLayers.map((l) => layout.positions[l]),
      regionOf: (s, i) => regionOf(sliceLayers[s])(s, i),
      colorscale: DIVERGING,
      zmin: -vmax,
      zmax: vmax,
      valueLabel: "z",
      title: `Network ${k} — z-map thresholded at |z| ≥ ${thr.toFixed(1)}`,
      map: (v) => (Math.abs(v) >= thr ? v : 0),
    });
  };
  const redraw = debounce(() => drawMap().catch(showError), 40);
  slider.addEventListener("input", () => {
    sliderOut.textContent = `|z| ≥ ${Number(slider.value).toFixed(1)}`;
    redraw(); // the map holds every neuron's z, so thresholding is done here
  });
  signalSelect.addEventListener("change", () => drawMap().catch(showError));

  // ---- time course, histogram, tokens, genres ---------------------------------------------
  const genrePlot = el("div.plot#genre-profile");
  const topTokens = topTokensList(detail.top_tokens || []);
  const ablation = ablationPanel(id, k, comp.n_key ?? 0, table.threshold, ctx);

  root.append(
    head,
    el(
      "section.card",
      el("div.controls",
        el("div.field", el("label", { for: "z-threshold", text: "Threshold" }), el("div.range", slider, sliderOut)),
        el("div.field", el("label", { for: "signal-view", text: "Signals" }), signalSelect),
        el("div.field", el("label", { for: "layout", text: "Layout" }), layoutChoice)),
      mosaic,
      aboveCount,
    ),
    el("section.card", el("h3", { text: "Time course over calibration tokens" }), el("p.muted.small", { text: `The network's activity at each token (hover for the token); vertical lines mark document starts.${detail.time_course?.n_tokens > (detail.time_course?.values?.length || 0) ? ` ${detail.time_course.values.length} of ${fmtInt(detail.time_course.n_tokens)} tokens shown, evenly subsampled.` : ""}` }), timePlot),
    el("div.grid-2",
      el("section.card", el("h3", { text: "Distribution of z over neurons" }), histPlot),
      el("section.card", el("h3", { text: "Mean activity per genre" }), genrePlot)),
    el("section.card", el("h3", { text: "Top-activating tokens in context" }), topTokens),
    ablation.node,
  );

  await drawMap();
  await Promise.all([drawTimeCourse(timePlot, detail.time_course), drawHistogram(histPlot, detail.histogram, Number(slider.value)), drawGenres(genrePlot, detail.genre_profile)]);
  return ablation.stop;
}

/** Make whitespace visible in a token / its context (newlines as ⏎, a blank token as ␣). */
function visible(text, isToken = false) {
  let out = String(text ?? "").replace(/\r?\n/g, "⏎").replace(/\t/g, "⇥");
  if (isToken && !out.trim()) out = out.replace(/ /g, "␣") || "∅";
  return out;
}

function topTokensList(items) {
  if (!items.length) return el("p.muted", { text: "No tokens recorded." });
  return el(
    "ol.top-tokens#top-tokens",
    items.map((t) =>
      el(
        "li",
        el("span.tt-value", { text: fmtNum(t.value) }),
        el("span.tt-context", el("span.ctx", { text: visible(t.left) }), el("mark", { text: visible(t.token, true) }), el("span.ctx", { text: visible(t.right) })),
        el("span.tt-meta.muted.small", { text: [t.label, t.doc !== undefined && t.doc !== null ? `doc ${t.doc}` : null].filter(Boolean).join(" · ") }),
      ),
    ),
  );
}

function drawTimeCourse(el_, tc) {
  if (!tc || !tc.values?.length) {
    el_.replaceChildren(el("p.muted", { text: "No time course recorded." }));
    return Promise.resolve();
  }
  const x = tc.values.map((_, i) => i);
  const tokens = tc.tokens || [];
  const docs = tc.docs || [];
  const customdata = tc.values.map((_, i) => [visible(tokens[i], true), docs[i] ?? "?"]);
  const starts = [];
  for (let i = 1; i < docs.length; i++) if (docs[i] !== docs[i - 1]) starts.push(i);
  return react(
    el_,
    [{ type: "scatter", mode: "lines", x, y: tc.values, customdata, line: { color: OKABE_ITO[0], width: 1.2 }, hovertemplate: "token %{x}: “%{customdata[0]}” (doc %{customdata[1]})<br>activity %{y:.2f}<extra></extra>" }],
    baseLayout({
      height: 260,
      xaxis: { title: { text: "token" }, zeroline: false },
      yaxis: { title: { text: "activity" }, zeroline: true, zerolinecolor: "#9aa5b1" },
      shapes: starts.slice(0, 400).map((s) => ({ type: "line", x0: s - 0.5, x1: s - 0.5, yref: "paper", y0: 0, y1: 1, line: { color: "#cbd2d9", width: 1 } })),
    }),
  );
}

function drawHistogram(el_, hist, thr) {
  if (!hist || !hist.counts?.length) {
    el_.replaceChildren(el("p.muted", { text: "No histogram." }));
    return Promise.resolve();
  }
  const { edges, counts } = hist;
  const centers = counts.map((_, i) => (edges[i] + edges[i + 1]) / 2);
  const widths = counts.map((_, i) => edges[i + 1] - edges[i]);
  const colors = centers.map((c) => (c <= -thr ? "#1b4f8f" : c >= thr ? "#a14e05" : "#9aa5b1"));
  return react(
    el_,
    [{ type: "bar", x: centers, y: counts, width: widths, marker: { color: colors }, hovertemplate: "z ≈ %{x:.2f}: %{y} neurons<extra></extra>" }],
    baseLayout({
      height: 280,
      bargap: 0,
      xaxis: { title: { text: "z" } },
      yaxis: { title: { text: "neurons (log)" }, type: "log" },
      shapes: [-thr, thr].map((t) => ({ type: "line", x0: t, x1: t, yref: "paper", y0: 0, y1: 1, line: { color: "#323f4b", dash: "dot", width: 1 } })),
      annotations: [{ x: thr, yref: "paper", y: 1, text: `|z| = ${fmtNum(thr, 1)}`, showarrow: false, xanchor: "left", font: { size: 11 } }],
    }),
  );
}

function drawGenres(el_, profile) {
  const entries = Object.entries(profile || {});
  if (!entries.length) {
    el_.replaceChildren(el("p.muted", { text: "The corpus has no genre labels." }));
    return Promise.resolve();
  }
  entries.sort((a, b) => b[1] - a[1]);
  return react(
    el_,
    [{ type: "bar", x: entries.map((e) => e[0]), y: entries.map((e) => e[1]), marker: { color: entries.map((e) => (e[1] >= 0 ? OKABE_ITO[1] : OKABE_ITO[0])) }, hovertemplate: "%{x}: %{y:.3f}<extra></extra>" }],
    baseLayout({ height: 280, xaxis: { tickangle: -30, automargin: true }, yaxis: { title: { text: "mean activity" }, zeroline: true } }),
  );
}
