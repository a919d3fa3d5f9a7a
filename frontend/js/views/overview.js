// Screen 2: the "digital brain" — one slice per layer, neurons on a fixed grid (the run's
// functional atlas, each network a region; or by neuron index), coloured by key-neuron density
// (how many networks a neuron is key in), max |z| over all networks, or why a neuron is key (a stable
// network, or only the unresolved-subspace energy: a PCA statistic, not a network).
import { api, urls } from "../api.js";
import { drawMosaic, drawMosaicCanvas, getLayout, KEY_SOURCES, keySourceColorscale, layoutSelect, REGION_MAX, regionColorscale, regionRgb, regionValues, SEQUENTIAL } from "../charts.js";
import { decodeArray, decodeSparseMaps } from "../decode.js";
import { el, fmtInt, fmtNum, showError } from "../dom.js";
import { getMaps, getNetworks, getOverview } from "../store.js";
import { analysisDownloads, analysisTabs, ownLayer, waitForJob } from "./common.js";

export async function render(root, { id }, ctx) {
  const job = await api(urls.job("analyses", id));
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "overview", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);
  return renderOverview(root, id, ctx);
}

async function renderOverview(root, id, ctx) {
  const [ov, table, firstLayout] = await Promise.all([getOverview(id), getNetworks(id), getLayout(id)]);
  let layout = firstLayout;
  if (!ctx.alive()) return;
  const nLayers = ov.n_layers;
  const width = ov.width;
  const grid = ov.grid;
  const byId = new Map(table.components.map((c) => [c.id, c]));
  // hover: the atlas network a neuron belongs to (its region), by name
  const regionOf = (s, i) => {
    const net = layout.network[s]?.[i];
    if (!net) return "background (in no network)";
    const c = byId.get(net - 1);
    return `region: network ${net - 1}${c?.name ? ` “${c.name}”` : ""}`;
  };
  const density = decodeArray({ scale: 1, ...ov.density });
  const maxZ = decodeArray(ov.max_z);
  // why each neuron is key (0 not key, 1 a stable network, 2 only the unresolved-subspace energy)
  // (a server older than the key source sends neither array: the view then shows no key-source parts)
  const hasSource = Boolean(ov.key_source && ov.key_sources);
  const keySource = hasSource ? decodeArray({ scale: 1, ...ov.key_source }) : null;
  const thrText = fmtNum(ov.threshold, 1);
  const whyKey = (s, i) => {
    const src = keySource?.[s * width + i];
    if (src === 1) return `a stable network (reproduced by every FastICA restart) has |z| ≥ ${thrText}`;
    if (src === 2) return "only the unresolved-subspace energy reaches the threshold (a PCA statistic; no stable network does)";
    return null;
  };
  const reasonOf = (s, i) => (whyKey(s, i) ? `key: ${whyKey(s, i)}` : "not key");
  // hover: the neuron's region, and why it is key
  const describe = hasSource ? (s, i) => `${regionOf(s, i)}<br>${reasonOf(s, i)}` : regionOf;
  let nFromNetworks = 0;
  let nFromUnresolved = 0;
  for (const r of ov.key_sources || []) {
    nFromNetworks += r.n_key_network;
    nFromUnresolved += r.n_key_unresolved;
  }
  const sliceLabels = Array.from({ length: nLayers }, (_, l) => `L${l}`);
  let nKeyNeurons = 0; // score above the threshold: what the masks keep
  for (const v of keySource || density) if (v > 0) nKeyNeurons++;

  const plot = el("div.plot.mosaic#overview-mosaic", { "aria-label": "Mosaic of all layers" });
  const measure = el("fieldset.toggle", el("legend", { text: "Colour by" }),
    el("label.check", el("input", { type: "radio", name: "measure", value: "regions", checked: true }), " network regions"),
    el("label.check", el("input", { type: "radio", name: "measure", value: "density" }), " key-neuron density"),
    el("label.check", el("input", { type: "radio", name: "measure", value: "maxz" }), " max |z|"),
    hasSource ? el("label.check", el("input", { type: "radio", name: "measure", value: "source" }), " key source") : "",
  );
  const swatch = (colour) => {
    const box = el("span.swatch", { "aria-hidden": "true" });
    Object.assign(box.style, { display: "inline-block", width: "0.9em", height: "0.9em", background: colour, border: "1px solid #9aa5b1", verticalAlign: "-0.1em", marginRight: "0.3em" });
    return box;
  };
  const legend = el(
    "div.legend#key-source-legend",
    { hidden: true },
    el("ul.inline", { style: "list-style: none; padding: 0; margin: 0.4rem 0; display: flex; gap: 1.2rem; flex-wrap: wrap" },
      KEY_SOURCES.map((k) => el("li", swatch(k.colour), k.label))),
    el("p.muted.small", { text: "Unresolved-subspace energy: a neuron's energy in the part of the top PCA subspace that FastICA restarts do not resolve into reproducible networks — a rotation-invariant PCA statistic that stands in for those components, not a network." }),
  );
  const perLayer = el(
    "details#key-source-layers",
    el("summary", { text: "Why neurons are key, per layer" }),
    el("table.compact",
      el("thead", el("tr", ["layer", "stable networks", "key neurons", "from stable networks", "only unresolved energy"].map((h) => el("th", { text: h })))),
      el("tbody", (ov.key_sources || []).map((r) => {
        const pct = (n) => (r.n_key ? `${fmtInt(n)} (${fmtNum((100 * n) / r.n_key, 0)} %)` : "—");
        return el("tr", el("td", { text: `L${r.layer}` }), el("td", { text: `${r.n_stable} of ${r.n_components}` }), el("td", { text: fmtInt(r.n_key) }), el("td", { text: pct(r.n_key_network) }), el("td", { text: pct(r.n_key_unresolved) }));
      }))),
  );
  const caption = el("p.muted.small#overview-caption");
  const layoutChoice = el("div.field.inline", el("label", { for: "layout", text: "Layout" }), layoutSelect(async (name) => {
    try {
      layout = await getLayout(id, name);
      if (ctx.alive()) await draw();
    } catch (err) {
      showError(err);
    }
  }));

  const draw = () => {
    const m = measure.querySelector("input:checked").value;
    legend.hidden = m !== "source";
    if (m === "source") {
      plot.dataset.layout = layout.name;
      plot.dataset.measure = m;
      caption.textContent = `${nLayers} layers × ${fmtInt(width)} neurons, each slice a ${grid[0]} × ${grid[1]} grid. Blue: a network that every FastICA restart reproduces makes the neuron key; orange: only the unresolved-subspace energy does. Hover for why; click a neuron to list its networks.`;
      return drawMosaic(plot, keySource, {
        sliceLabels, width, grid, positions: layout.positions, regionOf: describe,
        colorscale: keySourceColorscale(), zmin: 0, zmax: KEY_SOURCES.length - 1, valueLabel: "", showscale: false,
        title: `Why each neuron is key (score ≥ ${thrText}): a stable network, or only the unresolved-subspace energy`,
      });
    }
    if (m === "regions") {
      plot.dataset.layout = layout.name;
      plot.dataset.measure = m;
      caption.textContent = `${nLayers} layers × ${fmtInt(width)} neurons, each slice a ${grid[0]} × ${grid[1]} grid. ${layout.name === "atlas" ? "Functional atlas: each neuron sits in the region of the network where its |z| is largest; related networks lie side by side; neurons in no network last (grey)." : "By neuron index: the same networks, scattered."} Hover a region for its network; click a neuron to list its networks.`;
      return drawMosaic(plot, regionValues(layout), {
        sliceLabels, width, grid, positions: layout.positions, regionOf: describe,
        colorscale: regionColorscale(), zmin: 0, zmax: REGION_MAX, valueLabel: "", showscale: false,
        title: `Network regions: each colour one network (its neurons with |z| ≥ ${fmtNum(ov.threshold, 1)} where it is their strongest); grey: in no network`,
      });
    }
    let vmax = 0;
    const values = m === "density" ? density : maxZ;
    for (const v of values) vmax = Math.max(vmax, v);
    const title = m === "density"
      ? `Key-neuron density: networks in which each neuron has |z| ≥ ${fmtNum(ov.threshold, 1)}`
      : `Max |z| over all networks (key threshold |z| ≥ ${fmtNum(ov.threshold, 1)})`;
    const how = layout.name === "atlas"
      ? "functional atlas: each neuron sits in the region of the network where its |z| is largest, related networks side by side, neurons in no network last"
      : "row-major by neuron index";
    caption.textContent = `${nLayers} layers × ${fmtInt(width)} neurons, each slice a ${grid[0]} × ${grid[1]} grid (${how}). Hover for layer, neuron, region and value; click a neuron to list its networks.`;
    plot.dataset.layout = layout.name;
    plot.dataset.measure = m;
    return drawMosaic(plot, values, {
      sliceLabels,
      width,
      grid,
      positions: layout.positions,
      regionOf: describe,
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
      const inRange = layer >= 0 && layer < nLayers && neuron >= 0 && neuron < width;
      probeResult.replaceChildren(
        el("h3", { text: `Layer ${layer}, neuron ${neuron}: ${hits.length ? `key in ${hits.length} network${hits.length > 1 ? "s" : ""}` : `in no network at |z| ≥ ${thrText}`}` }),
        inRange && hasSource
          ? el("p#neuron-key-source", { text: whyKey(layer, neuron) ? `Why it is key: ${whyKey(layer, neuron)}.` : "This neuron is not key: neither a stable network nor the unresolved-subspace energy reaches the threshold." })
          : "",
        hits.length
          ? el("ul.hits", hits.map((h) => el("li", el("a", { href: `#/analysis/${id}/network/${h.c.id}`, text: `Network ${h.c.id}` }), h.c.name ? ` “${h.c.name}”` : "", ` — z = ${fmtNum(h.z)}, ${ownLayer(h.c) !== null ? `layer ${h.c.layer}` : "all layers"}, ${h.c.label || "unknown"}`, h.c.stable === false ? " — not reproduced across FastICA restarts (counts only through the unresolved-subspace energy)" : "")))
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
    hasSource ? el("div", el("dt", { text: "Key: stable network / unresolved energy" }), el("dd#key-source-split", { text: `${fmtInt(nFromNetworks)} / ${fmtInt(nFromUnresolved)}` })) : "",
    el("div", el("dt", { text: "Signal-labelled" }), el("dd", { text: String(table.components.filter((c) => c.label === "signal").length) })),
  );

  root.append(
    el("section.card", el("h2", { text: "Digital brain" }), stats, el("div.controls", measure, layoutChoice), plot, legend, caption, hasSource ? perLayer : ""),
    el("section.card", el("h2", { text: "Which networks is a neuron in?" }), el("p.muted", { text: "Click a neuron in the mosaic, or type its layer and index." }), probeForm, probeResult),
    el("section.card", el("h2", { text: "Downloads" }), analysisDownloads(id)),
  );
  // plotly.js takes a second or two to compile in a cold browser: show the mosaic at once on a
  // <canvas> (same layout and colours), then swap in the interactive Plotly chart when it is ready.
  if (!window.Plotly) {
    const preview = el("canvas.mosaic-preview#overview-preview", { role: "img", "aria-label": "Mosaic of all layers (loading the interactive chart)" });
    drawMosaicCanvas(preview, regionValues(layout), nLayers, width, grid, { vmax: REGION_MAX, rgbOf: regionRgb, aspect: 3, positions: layout.positions });
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
