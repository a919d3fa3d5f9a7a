// Chart helpers: brain-style mosaics (Plotly heatmap and <canvas>), the neuron layout (functional
// atlas or index), colour scales, Plotly defaults.
// Colours are colour-blind safe: blue–white–orange diverging map, viridis for sequential
// values, Okabe–Ito for categories.
import { api, urls } from "./api.js";
import { decodeUint32 } from "./decode.js";

export const OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

// Diverging blue – white – orange, symmetric around 0 (position in [0, 1]).
export const DIVERGING = [
  [0.0, "#1b4f8f"],
  [0.25, "#6fa8d6"],
  [0.5, "#f7f7f7"],
  [0.75, "#f5a54a"],
  [1.0, "#a14e05"],
];

export const SEQUENTIAL = "Viridis";

const GAP_BG = "#dfe3e8"; // between slices ("outside the brain")

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}
const DIVERGING_RGB = DIVERGING.map(([p, c]) => [p, hexToRgb(c)]);

/** RGB at position t in [0, 1] of a colour scale given as [position, rgb] stops. */
function interpolateStops(stops, t) {
  t = Math.min(1, Math.max(0, t));
  for (let i = 1; i < stops.length; i++) {
    const [p1, c1] = stops[i];
    if (t <= p1) {
      const [p0, c0] = stops[i - 1];
      const f = (t - p0) / (p1 - p0 || 1);
      return [0, 1, 2].map((j) => Math.round(c0[j] + f * (c1[j] - c0[j])));
    }
  }
  return stops[stops.length - 1][1];
}

/** RGB of the diverging map for value v in [-vmax, vmax]. */
export function divergingRgb(v, vmax) {
  return interpolateStops(DIVERGING_RGB, vmax > 0 ? 0.5 + v / (2 * vmax) : 0.5);
}

// Viridis stops (as Plotly's "Viridis"), for canvas drawings of sequential values.
const VIRIDIS_RGB = [[0, "#440154"], [0.06, "#48186a"], [0.11, "#472d7b"], [0.17, "#424086"], [0.22, "#3b528b"],
  [0.28, "#33638d"], [0.33, "#2c728e"], [0.39, "#26828e"], [0.44, "#21918c"], [0.5, "#1fa088"], [0.56, "#28ae80"],
  [0.61, "#3fbc73"], [0.67, "#5ec962"], [0.72, "#84d44b"], [0.78, "#addc30"], [0.83, "#d8e219"], [0.89, "#fde725"],
  [1, "#fde725"]].map(([p, c]) => [p, hexToRgb(c)]);

/** RGB of viridis for value v in [0, vmax]. */
export function sequentialRgb(v, vmax) {
  return interpolateStops(VIRIDIS_RGB, vmax > 0 ? v / vmax : 0);
}

let plotlyPromise = null;

/** Resolves with window.Plotly once the async classic script has run; rejects in words if it failed. */
export function plotlyReady() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      let script = document.getElementById("plotly-script");
      const fail = () => reject(new Error("The chart library did not load (/vendor/plotly.min.js); charts cannot be drawn."));
      if (!script) {
        script = document.createElement("script");
        script.id = "plotly-script";
        script.src = "/vendor/plotly.min.js";
        script.async = true;
        // load only after the current frame is painted, so what is already drawn shows first
        requestAnimationFrame(() => setTimeout(() => document.head.append(script), 0));
      }
      if (script.dataset.failed) return fail();
      script.addEventListener("load", () => (window.Plotly ? resolve(window.Plotly) : fail()));
      script.addEventListener("error", fail);
    });
  }
  return plotlyPromise;
}

export const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

export function baseLayout(extra = {}) {
  return {
    font: { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 13, color: "#1f2933" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#ffffff",
    margin: { l: 56, r: 20, t: 36, b: 48 },
    hoverlabel: { bgcolor: "#ffffff", bordercolor: "#52606d", font: { color: "#1f2933" } },
    ...extra,
  };
}

/** Plotly.react with the app's config (waits for plotly.js). */
export async function react(el, data, layout, config = {}) {
  const Plotly = await plotlyReady();
  return Plotly.react(el, data, layout, { ...PLOT_CONFIG, ...config });
}

/** Number of slice columns so the mosaic is roughly as wide as `aspect` times its height. */
export function mosaicColumns(nSlices, grid, aspect = 1.8) {
  const [rows, cols] = grid;
  let best = 1;
  let bestErr = Infinity;
  for (let c = 1; c <= nSlices; c++) {
    const r = Math.ceil(nSlices / c);
    const w = c * (cols + 1);
    const h = r * (rows + 1);
    const err = Math.abs(Math.log(w / h / aspect));
    if (err < bestErr) {
      bestErr = err;
      best = c;
    }
  }
  return best;
}

// ---- the neuron layout: where each neuron of a layer is drawn on the layer's grid ----------------
// The server sends the grid and, per layer, each neuron's cell (GET /layout); the browser never
// computes either. "atlas": the run's functional atlas (each network a region); "index": cell j.

export const LAYOUTS = { atlas: "functional atlas (networks as regions)", index: "neuron index (row-major)" };
const LAYOUT_KEY = "fnprune.layout";
const layoutCache = new Map();

/** The layout the user chose last (shared by every view), "atlas" by default. */
export function preferredLayout() {
  try {
    const v = localStorage.getItem(LAYOUT_KEY);
    return v in LAYOUTS ? v : "atlas";
  } catch {
    return "atlas";
  }
}

/**
 * GET /api/analyses/{id}/layout?name=… decoded: {name, grid, positions, network}; positions[l] and
 * network[l] are Uint32Arrays (width): the cell of neuron j, and its atlas network id + 1 (0 = none;
 * the same in either layout).
 */
export function getLayout(id, name = preferredLayout()) {
  const key = `${id}:${name}`;
  if (!layoutCache.has(key)) {
    const load = api(urls.layout(id, name)).then((lay) => {
      const [nLayers, width] = lay.positions.shape;
      const pos = decodeUint32(lay.positions.data);
      const net = decodeUint32(lay.network.data);
      const rows = (a) => Array.from({ length: nLayers }, (_, l) => a.subarray(l * width, (l + 1) * width));
      return { name: lay.name, grid: lay.grid, width, nLayers, positions: rows(pos), network: rows(net) };
    });
    load.catch(() => layoutCache.delete(key));
    layoutCache.set(key, load);
  }
  return layoutCache.get(key);
}

// Atlas regions as a parcellation: one categorical colour per network, cycling in the order the
// networks lie on the slice, so neighbouring regions differ; background (in no network) light grey.
const REGION_BG = "#fafbfc";
const REGION_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#8c6d31"];
const REGION_RGB = [REGION_BG, ...REGION_COLOURS].map(hexToRgb);

/** Discrete Plotly colorscale for region values 0 (background) .. REGION_COLOURS.length. */
export function regionColorscale() {
  const colours = [REGION_BG, ...REGION_COLOURS];
  const n = colours.length - 1;
  const out = [];
  colours.forEach((c, k) => {
    out.push([Math.max(0, (k - 0.5) / n), c], [Math.min(1, (k + 0.5) / n), c]);
  });
  return out;
}
export const REGION_MAX = REGION_COLOURS.length;

/** RGB of region value v (for the canvas preview). */
export function regionRgb(v) {
  return REGION_RGB[Math.max(0, Math.min(REGION_MAX, Math.round(v)))];
}

/**
 * (nLayers * width) region value of every neuron: 0 for background, else 1 + (rank % colours) where
 * rank orders the layer's networks by their first cell on the slice.
 */
export function regionValues(layout) {
  const { nLayers, width } = layout;
  const out = new Float32Array(nLayers * width);
  for (let l = 0; l < nLayers; l++) {
    const net = layout.network[l];
    const pos = layout.positions[l];
    const first = new Map();
    for (let i = 0; i < width; i++) {
      if (!net[i]) continue;
      const cell = first.get(net[i]);
      if (cell === undefined || pos[i] < cell) first.set(net[i], pos[i]);
    }
    const rank = new Map([...first.entries()].sort((a, b) => a[1] - b[1]).map(([n], r) => [n, r]));
    for (let i = 0; i < width; i++) out[l * width + i] = net[i] ? 1 + (rank.get(net[i]) % REGION_MAX) : 0;
  }
  return out;
}

// Why a neuron is key (GET /overview "key_source"): 0 not key, 1 a stable network (reproduced by
// every FastICA restart), 2 only the unresolved-subspace energy (a PCA statistic, not a network).
export const KEY_SOURCES = [
  { value: 0, colour: "#eceff3", label: "not key" },
  { value: 1, colour: "#0072B2", label: "key: a stable network" },
  { value: 2, colour: "#E69F00", label: "key: only the unresolved-subspace energy" },
];

/** Discrete Plotly colorscale for key-source values 0..2 (zmin 0, zmax 2). */
export function keySourceColorscale() {
  const n = KEY_SOURCES.length - 1;
  return KEY_SOURCES.flatMap(({ colour }, k) => [[Math.max(0, (k - 0.5) / n), colour], [Math.min(1, (k + 0.5) / n), colour]]);
}

/** A <select id="layout"> of the layouts; remembers the choice and calls onChange(name). */
export function layoutSelect(onChange) {
  const select = document.createElement("select");
  select.id = "layout";
  for (const [value, text] of Object.entries(LAYOUTS)) select.append(new Option(text, value));
  select.value = preferredLayout();
  select.addEventListener("change", () => {
    try {
      localStorage.setItem(LAYOUT_KEY, select.value);
    } catch {
      /* private mode: the choice lasts for this page only */
    }
    onChange(select.value);
  });
  return select;
}

/**
 * Lay slices out as a mosaic. `values` is (nSlices * width) in slice-major order; neuron i of
 * slice s sits at cell c = positions[s][i] (c = i when `positions` or positions[s] is absent), i.e.
 * row floor(c / cols), column c % cols of the slice's grid. Returns the 2-D z matrix (null between
 * slices and in empty cells), matching customdata [sliceLabel, neuron, sliceIndex, region], and
 * where each slice starts. `regionOf(s, i)` names the region (network) of a neuron, for hovers.
 */
export function buildMosaic(values, sliceLabels, width, grid, { nCols, map = (v) => v, positions = null, regionOf = null } = {}) {
  const [rows, cols] = grid;
  const nSlices = sliceLabels.length;
  nCols = nCols || mosaicColumns(nSlices, grid);
  const nRows = Math.ceil(nSlices / nCols);
  const H = nRows * (rows + 1) - 1;
  const W = nCols * (cols + 1) - 1;
  const z = Array.from({ length: H }, () => new Array(W).fill(null));
  const customdata = Array.from({ length: H }, () => new Array(W).fill(null));
  const origins = [];
  for (let s = 0; s < nSlices; s++) {
    const y0 = Math.floor(s / nCols) * (rows + 1);
    const x0 = (s % nCols) * (cols + 1);
    origins.push([x0, y0]);
    const pos = positions?.[s];
    for (let i = 0; i < width; i++) {
      const cell = pos ? pos[i] : i;
      if (cell >= rows * cols) continue;
      const y = y0 + Math.floor(cell / cols);
      const x = x0 + (cell % cols);
      z[y][x] = map(values[s * width + i]);
      customdata[y][x] = [sliceLabels[s], i, s, regionOf ? regionOf(s, i) : ""];
    }
  }
  return { z, customdata, origins, H, W, nCols, nRows };
}

/**
 * Draw a mosaic into a Plotly heatmap. opts: sliceLabels, width, grid, colorscale, zmin, zmax,
 * valueLabel, title, map (value transform, e.g. thresholding), height.
 */
export function drawMosaic(el, values, opts) {
  const { sliceLabels, width, grid, colorscale, zmin, zmax, valueLabel = "value", title = "" } = opts;
  const containerWidth = el.clientWidth || 900;
  const aspect = Math.max(1.2, Math.min(3, containerWidth / 420));
  const m = buildMosaic(values, sliceLabels, width, grid, { map: opts.map, positions: opts.positions, regionOf: opts.regionOf, nCols: opts.nCols || mosaicColumns(sliceLabels.length, grid, aspect) });
  const annotations = m.origins.map(([x0, y0], s) => ({
    x: x0 - 0.5,
    y: y0 - 0.5,
    xref: "x",
    yref: "y",
    xanchor: "left",
    yanchor: "top",
    text: sliceLabels[s],
    showarrow: false,
    font: { size: 10, color: "#1f2933" },
    bgcolor: "rgba(255,255,255,0.75)",
    borderpad: 1,
  }));
  const plotWidth = containerWidth - 110;
  // Square cells, at most 22 px each and the mosaic at most ~560 px tall, so a map with few
  // slices (one layer of 1,536 neurons) does not fill the screen.
  const cell = Math.min(22, plotWidth / m.W, Math.max(4, 560 / m.H));
  const height = opts.height || Math.max(200, Math.min(1400, cell * m.H + (title ? 48 : 16)));
  const trace = {
    type: "heatmap",
    z: m.z,
    customdata: m.customdata,
    colorscale,
    zmin,
    zmax,
    hoverongaps: false,
    xgap: 0,
    ygap: 0,
    showscale: opts.showscale ?? true,
    colorbar: { title: { text: valueLabel, side: "right" }, thickness: 14, len: 0.9, ...(opts.colorbar || {}) },
    hovertemplate: `%{customdata[0]} · neuron %{customdata[1]}${opts.regionOf ? "<br>%{customdata[3]}" : ""}${valueLabel ? `<br>${valueLabel}: %{z:.2f}` : ""}<extra></extra>`,
  };
  const layout = baseLayout({
    title: title ? { text: title, x: 0, xanchor: "left", font: { size: 15 } } : undefined,
    height,
    margin: { l: 8, r: 8, t: title ? 40 : 8, b: 8 },
    plot_bgcolor: GAP_BG,
    xaxis: { visible: false, range: [-0.5, m.W - 0.5], constrain: "domain" },
    yaxis: { visible: false, range: [m.H - 0.5, -0.5], scaleanchor: "x", constrain: "domain" },
    annotations,
  });
  return react(el, [trace], layout);
}

/**
 * Draw a small mosaic on a <canvas>, one pixel per neuron (CSS scales it up, pixelated).
 * `values` (nSlices * width); below |threshold| is drawn faded; gaps grey. `positions[s]`: the
 * cell of each neuron of slice s (as in buildMosaic; index order when absent).
 */
export function drawMosaicCanvas(canvas, values, nSlices, width, grid, { vmax, threshold = 0, rgbOf = divergingRgb, aspect = 1.4, positions = null } = {}) {
  const [rows, cols] = grid;
  const nCols = mosaicColumns(nSlices, grid, aspect);
  const nRows = Math.ceil(nSlices / nCols);
  const H = nRows * (rows + 1) - 1;
  const W = nCols * (cols + 1) - 1;
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(W, H);
  const gap = hexToRgb(GAP_BG);
  for (let p = 0; p < W * H; p++) {
    img.data[4 * p] = gap[0];
    img.data[4 * p + 1] = gap[1];
    img.data[4 * p + 2] = gap[2];
    img.data[4 * p + 3] = 255;
  }
  if (!vmax) {
    vmax = 0;
    for (const v of values) vmax = Math.max(vmax, Math.abs(v));
    vmax = vmax || 1;
  }
  for (let s = 0; s < nSlices; s++) {
    const y0 = Math.floor(s / nCols) * (rows + 1);
    const x0 = (s % nCols) * (cols + 1);
    const pos = positions?.[s];
    for (let i = 0; i < width; i++) {
      const cell = pos ? pos[i] : i;
      if (cell >= rows * cols) continue;
      const v = values[s * width + i];
      // Sub-threshold neurons are drawn faded (70 % white) so the key neurons stand out.
      let rgb = rgbOf(v, vmax);
      if (Math.abs(v) < threshold) rgb = rgb.map((c) => Math.round(c + (255 - c) * 0.7));
      const p = (y0 + Math.floor(cell / cols)) * W + x0 + (cell % cols);
      img.data[4 * p] = rgb[0];
      img.data[4 * p + 1] = rgb[1];
      img.data[4 * p + 2] = rgb[2];
    }
  }
  ctx.putImageData(img, 0, 0);
}

/**
 * Combine the signals of a network map (n_layers_in_map, n_signals, width) into one slice per
 * layer, keeping for each neuron the signed value with the largest |z|.
 */
export function combineSignals(values, nLayers, nSignals, width) {
  const out = new Float32Array(nLayers * width);
  for (let l = 0; l < nLayers; l++) {
    for (let i = 0; i < width; i++) {
      let best = 0;
      for (let s = 0; s < nSignals; s++) {
        const v = values[(l * nSignals + s) * width + i];
        if (Math.abs(v) > Math.abs(best)) best = v;
      }
      out[l * width + i] = best;
    }
  }
  return out;
}

/** Pick one signal out of (n_layers_in_map, n_signals, width) -> (n_layers_in_map, width). */
export function pickSignal(values, nLayers, nSignals, width, signal) {
  const out = new Float32Array(nLayers * width);
  for (let l = 0; l < nLayers; l++) {
    out.set(values.subarray((l * nSignals + signal) * width, (l * nSignals + signal + 1) * width), l * width);
  }
  return out;
}

/**
 * An ablation's perplexity change per genre (`rows`: the API's AblationRow list, `all` last): the networks
 * zeroed / dense and the random control / dense, each a dot with its paired 95% interval; 1 = no change.
 */
export function drawAblation(el, rows) {
  const x = rows.map((r) => (r.genre === "all" ? `all (${r.n_docs} docs)` : `${r.genre} (${r.n_docs})`));
  const trace = (key, name, color) => ({
    type: "scatter",
    mode: "markers",
    name,
    x,
    y: rows.map((r) => r[key].ratio),
    error_y: { type: "data", symmetric: false, array: rows.map((r) => r[key].high - r[key].ratio), arrayminus: rows.map((r) => r[key].ratio - r[key].low), color, thickness: 1.5, width: 6 },
    customdata: rows.map((r) => [r[key].low, r[key].high]),
    marker: { color, size: 10 },
    hovertemplate: `%{x}<br>${name}: %{y:.3f}× [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>`,
  });
  return react(
    el,
    [trace("network_vs_dense", "this network zeroed / dense", OKABE_ITO[5]), trace("random_vs_dense", "random neurons zeroed / dense", "#52606d")],
    baseLayout({
      height: 300,
      scattermode: "group",
      legend: { orientation: "h", y: 1.12 },
      xaxis: { automargin: true, tickangle: -20 },
      yaxis: { title: { text: "perplexity ratio to dense" } },
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 1, y1: 1, line: { color: "#323f4b", dash: "dot", width: 1 } }],
    }),
  );
}
