// Screen 3: one small brain-style map per network (drawn on <canvas>), sortable and filterable,
// with a signal / noise / unknown label per network.
import { api } from "../api.js";
import { combineSignals, defaultGrid, drawMosaicCanvas } from "../charts.js";
import { decodeArray } from "../decode.js";
import { el, fmtNum, showError } from "../dom.js";
import { getNetwork, getNetworks, mapLimit } from "../store.js";
import { analysisTabs, labelSelect, LABELS } from "./common.js";
import { waitForJob } from "./overview.js";

const SORTS = {
  id: ["Network number", (a, b) => a.id - b.id],
  n_key: ["Size (key neurons)", (a, b) => b.n_key - a.n_key || a.id - b.id],
  stability: ["Stability", (a, b) => (b.stability ?? 0) - (a.stability ?? 0) || a.id - b.id],
  genre_selectivity: ["Genre selectivity", (a, b) => (b.genre_selectivity ?? 0) - (a.genre_selectivity ?? 0) || a.id - b.id],
  peak_z: ["Peak |z|", (a, b) => (b.peak_z ?? 0) - (a.peak_z ?? 0) || a.id - b.id],
  layer: ["Layer", (a, b) => (a.layer ?? -1) - (b.layer ?? -1) || a.id - b.id],
};

export async function render(root, { id }, ctx) {
  const job = await api(`/api/analyses/${id}`);
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "gallery", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);

  const table = await getNetworks(id);
  if (!ctx.alive()) return;
  const comps = table.components;
  const layers = [...new Set(comps.map((c) => c.layer).filter((l) => l !== null && l !== undefined))].sort((a, b) => a - b);
  const genres = [...new Set(comps.map((c) => c.top_genre).filter(Boolean))].sort();

  // ---- controls ---------------------------------------------------------------------------
  const sortSelect = el("select#sort", Object.entries(SORTS).map(([k, [label]]) => el("option", { value: k, text: label })));
  const layerSelect = el("select#filter-layer", el("option", { value: "", text: "All layers" }), layers.map((l) => el("option", { value: String(l), text: `Layer ${l}` })));
  const labelFilter = el("select#filter-label", el("option", { value: "", text: "Any label" }), LABELS.map((l) => el("option", { value: l, text: l })));
  const genreFilter = el("select#filter-genre", el("option", { value: "", text: "Any top genre" }), genres.map((g) => el("option", { value: g, text: g })));
  const maxKey = Math.max(1, ...comps.map((c) => c.n_key || 0));
  const minSize = el("input#filter-size", { type: "number", min: "0", max: String(maxKey), value: "0" });
  const minStab = el("input#filter-stability", { type: "range", min: "0", max: "1", step: "0.05", value: "0" });
  const minStabOut = el("output", { for: "filter-stability", text: "0.00" });
  const minSel = el("input#filter-selectivity", { type: "range", min: "0", max: "1", step: "0.05", value: "0" });
  const minSelOut = el("output", { for: "filter-selectivity", text: "0.00" });
  const count = el("p.muted.small#gallery-count", { "aria-live": "polite" });
  const controls = el(
    "div.controls",
    el("div.field", el("label", { for: "sort", text: "Sort by" }), sortSelect),
    el("div.field", el("label", { for: "filter-layer", text: "Layer" }), layerSelect),
    el("div.field", el("label", { for: "filter-label", text: "Label" }), labelFilter),
    genres.length ? el("div.field", el("label", { for: "filter-genre", text: "Top genre" }), genreFilter) : null,
    el("div.field", el("label", { for: "filter-size", text: "Min. key neurons" }), minSize),
    el("div.field", el("label", { for: "filter-stability", text: "Min. stability" }), el("div.range", minStab, minStabOut)),
    el("div.field", el("label", { for: "filter-selectivity", text: "Min. genre selectivity" }), el("div.range", minSel, minSelOut)),
  );

  // ---- cards ------------------------------------------------------------------------------
  const cards = new Map();
  for (const c of comps) {
    const canvas = el("canvas.thumb", { width: 1, height: 1, role: "img", "aria-label": `Map of network ${c.id}` });
    const card = el(
      "article.net-card",
      { dataset: { id: String(c.id) }, "data-testid": "network-card" },
      el("a.thumb-link", { href: `#/analysis/${id}/network/${c.id}`, "aria-label": `Open network ${c.id}` }, canvas),
      el("div.net-card-body",
        el("h3", el("a", { href: `#/analysis/${id}/network/${c.id}`, text: `Network ${c.id}` }), el("span.muted", { text: c.layer !== null && c.layer !== undefined ? ` · L${c.layer}` : " · all layers" })),
        el("p.net-stats",
          el("span", { title: "Key neurons", text: `${c.n_key} key` }),
          el("span", { title: "Stability across ICA runs", text: `stab ${fmtNum(c.stability)}` }),
          el("span", { title: "Peak |z|", text: `peak ${fmtNum(c.peak_z, 1)}` }),
        ),
        c.top_genre ? el("p.net-genre.small", { text: `${c.top_genre} (selectivity ${fmtNum(c.genre_selectivity)})` }) : null,
        labelSelect(id, c, () => apply()),
      ),
    );
    cards.set(c.id, { card, canvas, c, drawn: false });
  }
  const gridEl = el("div.gallery#gallery", { "aria-label": "Networks" });

  function apply() {
    const layer = layerSelect.value;
    const label = labelFilter.value;
    const genre = genreFilter.value;
    const size = Number(minSize.value) || 0;
    const stab = Number(minStab.value);
    const sel = Number(minSel.value);
    minStabOut.textContent = stab.toFixed(2);
    minSelOut.textContent = sel.toFixed(2);
    const shown = comps
      .filter((c) => (layer === "" || String(c.layer) === layer)
        && (label === "" || (c.label || "unknown") === label)
        && (genre === "" || c.top_genre === genre)
        && (c.n_key || 0) >= size
        && (c.stability ?? 1) >= stab
        && (c.genre_selectivity ?? 0) >= sel)
      .sort(SORTS[sortSelect.value][1]);
    gridEl.replaceChildren(...shown.map((c) => cards.get(c.id).card));
    count.textContent = `${shown.length} of ${comps.length} networks shown · maps at |z| ≥ ${fmtNum(table.threshold, 1)} (blue negative, orange positive)`;
  }
  controls.addEventListener("input", apply);
  controls.addEventListener("change", apply);
  apply();

  root.append(el("section.card", el("h2", { text: "Network gallery" }), controls, count, gridEl));

  // Draw thumbnails as their maps arrive (a few requests in flight at once).
  const order = [...comps].sort((a, b) => a.id - b.id);
  mapLimit(order, 6, async (c) => {
    if (!ctx.alive()) return;
    try {
      const detail = await getNetwork(id, c.id);
      if (!ctx.alive()) return;
      const map = detail.map;
      const values = decodeArray(map);
      const nL = map.layers.length;
      const combined = combineSignals(values, nL, map.signals.length, map.width);
      const entry = cards.get(c.id);
      drawMosaicCanvas(entry.canvas, combined, nL, map.width, map.grid || defaultGrid(map.width), { threshold: detail.threshold ?? table.threshold });
      entry.drawn = true;
      entry.card.dataset.drawn = "true";
    } catch (err) {
      if (ctx.alive()) showError(`Map of network ${c.id} could not be loaded: ${err.message}`);
    }
  }).then(() => {
    if (ctx.alive()) gridEl.dataset.complete = "true";
  });
}
