// Screen 2: the "digital brain" — one slice per layer, neurons on a fixed grid, coloured by
// key-neuron density (how many networks a neuron is key in) or max |z| over all networks.
import { api } from "../api.js";
import { defaultGrid, drawMosaic, drawMosaicCanvas, SEQUENTIAL, sequentialRgb } from "../charts.js";
import { decodeArray, decodeSparseMaps } from "../decode.js";
import { el, fmtInt, fmtNum, showError } from "../dom.js";
import { getMaps, getNetworks, getOverview } from "../store.js";
import { analysisDownloads, analysisTabs, jobProgress, ownLayer } from "./common.js";

export async function render(root, { id }, ctx) {
  const job = await api(`/api/analyses/${id}`);
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "overview", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);
  return renderOverview(root, id, ctx);
}

/** Shared by the analysis views: show progress until the analysis is done, then re-route. */
export function waitForJob(root, id, job, ctx) {
  if (job.status === "failed" || job.status === "cancelled") {
    const reason = job.status === "failed" ? `This analysis failed: ${job.error || "no reason given"}` : "This analysis was cancelled.";
    if (job.status === "failed") showError(reason);
    root.append(el("section.card", el("h2", { text: job.status === "failed" ? "Analysis failed" : "Analysis cancelled" }), el("p", { text: reason }), el("a.btn.btn-primary", { href: "#/new", text: "Start a new analysis" })));
    return;
  }
  const progress = jobProgress("analyses", id, {
    title: `Analysis ${id}`,
    onDone: () => {
      if (ctx.alive()) window.dispatchEvent(new HashChangeEvent("hashchange"));
    },
  });
  root.append(progress.node);
  return progress.stop;
}

async function renderOverview(root, id, ctx) {
  const [ov, table] = await Promise.all([getOverview(id), getNetworks(id)]);
  if (!ctx.alive()) return;
  const nLayers = ov.n_layers;
  const width = ov.width;
  const grid = ov.grid || defaultGrid(width);
  const density = decodeArray({ scale: 1, ...ov.density });
  const maxZ = decodeArray(ov.max_z);
  const sliceLabels = Array.from({ length: nLayers }, (_, l) => `L${l}`);
  let nKeyNeurons = 0;
  for (const v of density) if (v > 0) nKeyNeurons++;

  const plot = el("div.plot.mosaic#overview-mosaic", { "aria-label": "Mosaic of all layers" });
  const measure = el("fieldset.toggle", el("legend", { text: "Colour by" }),
    el("label.check", el("input", { type: "radio", name: "measure", value: "density", checked: true }), " key-neuron density"),
    el("label.check", el("input", { type: "radio", name: "measure", value: "maxz" }), " max |z|"),
  );
  const caption = el("p.muted.small#overview-caption");

  const draw = () => {
    const m = measure.querySelector("input:checked").value;
    let vmax = 0;
    const values = m === "density" ? density : maxZ;
    for (const v of values) vmax = Math.max(vmax, v);
    const title = m === "density"
      ? `Key-neuron density: networks in which each neuron has |z| ≥ ${fmtNum(ov.threshold, 1)}`
      : `Max |z| over all networks (key threshold |z| ≥ ${fmtNum(ov.threshold, 1)})`;
    caption.textContent = `${nLayers} layers × ${fmtInt(width)} neurons, each slice a ${grid[0]} × ${grid[1]} grid (row-major by neuron index). Hover for layer, neuron and value; click a neuron to list its networks.`;
    return drawMosaic(plot, values, {
      sliceLabels,
      width,
      grid,
      colorscale: SEQUENTIAL,
      zmin: 0,
      zmax: vmax || 1,
      valueLabel: m === "density" ? "networks" : "max |z|",
      colorbar: m === "density" && vmax <= 12 ? { dtick: 1, tick0: 0 } : {}, // counts: whole ticks
      title,
    });
  };
  measure.addEventListener("change", () => draw().catch(showError));

  // ---- neuron → networks ------------------------------------------------------------------
  const layerInput = el("input#probe-layer", { type: "number", min: "0", max: String(nLayers - 1), value: "0", required: true });
  const neuronInput = el("input#probe-neuron", { type: "number", min: "0", max: String(width - 1), value: "0", required: true });
  const probeResult = el("div#neuron-networks", { "aria-live": "polite" });
  const probeForm = el(
    "form.probe",
    el("div.field.inline", el("label", { for: "probe-layer", text: "Layer" }), layerInput),
    el("div.field.inline", el("label", { for: "probe-neuron", text: "Neuron" }), neuronInput),
    el("button.btn.btn-secondary", { type: "submit", text: "Find its networks" }),
  );
  probeForm.addEventListener("submit", (e) => {
    e.preventDefault();
    probe(Number(layerInput.value), Number(neuronInput.value));
  });

  async function probe(layer, neuron) {
    layerInput.value = String(layer);
    neuronInput.value = String(neuron);
    probeResult.replaceChildren(el("p.muted", { text: `Looking up the networks of layer ${layer}, neuron ${neuron}…` }));
    try {
      // One request for every map (sparse: only |z| above the analysis threshold).
      const maps = await getMaps(id);
      if (!ctx.alive()) return;
      const { offsets, index, values } = decodeSparseMaps(maps);
      const hits = [];
      table.components.forEach((c, position) => {
        const k = maps.n_components === table.components.length ? position : c.id;
        let slot;
        if (maps.map_layers) slot = maps.map_layers.indexOf(layer); // whole-model: every layer in each map
        else slot = (maps.component_layer?.[k] ?? c.layer) === layer ? 0 : -1; // per-layer: one slice
        if (slot < 0) return;
        const target = slot * maps.width + neuron;
        for (let e = offsets[k]; e < offsets[k + 1]; e++) {
          if (index[e] === target) {
            hits.push({ c, z: values[e] });
            break;
          }
        }
      });
      hits.sort((a, b) => Math.abs(b.z) - Math.abs(a.z));
      const thrText = fmtNum(table.threshold, 1);
      probeResult.replaceChildren(
        el("h3", { text: `Layer ${layer}, neuron ${neuron}: ${hits.length ? `key in ${hits.length} network${hits.length > 1 ? "s" : ""}` : `in no network at |z| ≥ ${thrText}`}` }),
        hits.length
          ? el("ul.hits", hits.map((h) => el("li", el("a", { href: `#/analysis/${id}/network/${h.c.id}`, text: `Network ${h.c.id}` }), ` — z = ${fmtNum(h.z)}, ${ownLayer(h.c) !== null ? `layer ${h.c.layer}` : "all layers"}, ${h.c.label || "unknown"}`)))
          : "",
      );
    } catch (err) {
      probeResult.replaceChildren(el("p.muted", { text: "Lookup failed." }));
      showError(err);
    }
  }

  const stats = el(
    "dl.stats",
    el("div", el("dt", { text: "Layers" }), el("dd", { text: String(nLayers) })),
    el("div", el("dt", { text: "Neurons per layer" }), el("dd", { text: fmtInt(width) })),
    el("div", el("dt", { text: "Networks" }), el("dd", { text: String(table.components.length) })),
    el("div", el("dt", { text: "Key threshold" }), el("dd", { text: `|z| ≥ ${fmtNum(ov.threshold, 1)}` })),
    el("div", el("dt", { text: "Key neurons" }), el("dd#n-key-neurons", { text: `${fmtInt(nKeyNeurons)} (${fmtNum((100 * nKeyNeurons) / (nLayers * width), 1)} %)` })),
    el("div", el("dt", { text: "Signal-labelled" }), el("dd", { text: String(table.components.filter((c) => c.label === "signal").length) })),
  );

  root.append(
    el("section.card", el("h2", { text: "Digital brain" }), stats, measure, plot, caption),
    el("section.card", el("h2", { text: "Which networks is a neuron in?" }), el("p.muted", { text: "Click a neuron in the mosaic, or type its layer and index." }), probeForm, probeResult),
    el("section.card", el("h2", { text: "Downloads" }), analysisDownloads(id)),
  );
  // plotly.js takes a second or two to compile in a cold browser: show the mosaic at once on a
  // <canvas> (same layout and colours), then swap in the interactive Plotly chart when it is ready.
  if (!window.Plotly) {
    const preview = el("canvas.mosaic-preview#overview-preview", { role: "img", "aria-label": "Mosaic of all layers (loading the interactive chart)" });
    let vmax = 1;
    for (const v of density) vmax = Math.max(vmax, v);
    drawMosaicCanvas(preview, density, nLayers, width, grid, { vmax, rgbOf: sequentialRgb, aspect: 3 });
    plot.before(preview);
    try {
      await draw();
    } finally {
      preview.remove();
    }
  } else {
    await draw();
  }
  plot.on?.("plotly_click", (data) => {
    const cd = data?.points?.[0]?.customdata;
    if (cd) probe(Number(cd[2]), Number(cd[1]));
  });
  const onResize = () => draw().catch(() => {});
  let t = null;
  const resize = () => {
    clearTimeout(t);
    t = setTimeout(onResize, 200);
  };
  window.addEventListener("resize", resize);
  return () => window.removeEventListener("resize", resize);
}
