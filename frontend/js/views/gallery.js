// Screen 3: one small brain-style map per network (drawn on <canvas>, in the run's functional atlas
// layout or by neuron index), sortable and filterable, with its name and a signal / noise / unknown
// label per network.
import { api, urls } from "../api.js";
import { drawMosaicCanvas, getLayout, layoutSelect } from "../charts.js";
import { decodeSparseMaps } from "../decode.js";
import { el, fmtNum, showError } from "../dom.js";
import { getMaps, getNetworks } from "../store.js";
import { analysisTabs, labelSelect, LABELS, ownLayer, waitForJob } from "./common.js";

const SORTS = {
  id: ["Network number", (a, b) => a.id - b.id],
  n_key: ["Size (key neurons)", (a, b) => b.n_key - a.n_key || a.id - b.id],
  stability: ["Stability", (a, b) => (b.stability ?? 0) - (a.stability ?? 0) || a.id - b.id],
  genre_selectivity: ["Genre selectivity", (a, b) => (b.genre_selectivity ?? 0) - (a.genre_selectivity ?? 0) || a.id - b.id],
  peak_z: ["Peak |z|", (a, b) => (b.peak_z ?? 0) - (a.peak_z ?? 0) || a.id - b.id],
  layer: ["Layer", (a, b) => (ownLayer(a) ?? -1) - (ownLayer(b) ?? -1) || a.id - b.id],
};

export async function render(root, { id }, ctx) {
  const job = await api(urls.job("analyses", id));
  if (!ctx.alive()) return;
  root.append(analysisTabs(id, "gallery", job));
  if (job.status !== "succeeded") return waitForJob(root, id, job, ctx);

  const [table, firstLayout] = await Promise.all([getNetworks(id), getLayout(id)]);
  if (!ctx.alive()) return;
  let layout = firstLayout;
  const comps = table.components;
  const layers = [...new Set(comps.map(ownLayer).filter((l) => l !== null))].sort((a, b) => a - b);
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
  const nameFilter = el("input#filter-name", { type: "search", placeholder: "e.g. was", "aria-label": "Name contains" });
  const count = el("p.muted.small#gallery-count", { "aria-live": "polite" });
  const controls = el(
    "div.controls",
    el("div.field", el("label", { for: "sort", text: "Sort by" }), sortSelect),
    el("div.field", el("label", { for: "filter-name", text: "Name contains" }), nameFilter),
    el("div.field", el("label", { for: "filter-layer", text: "Layer" }), layerSelect),
    el("div.field", el("label", { for: "filter-label", text: "Label" }), labelFilter),
    genres.length ? el("div.field", el("label", { for: "filter-genre", text: "Top genre" }), genreFilter) : null,
    el("div.field", el("label", { for: "filter-size", text: "Min. key neurons" }), minSize),
    el("div.field", el("label", { for: "filter-stability", text: "Min. stability" }), el("div.range", minStab, minStabOut)),
    el("div.field", el("label", { for: "filter-selectivity", text: "Min. genre selectivity" }), el("div.range", minSel, minSelOut)),
  );

  // Thumbnails come from one request (GET /maps: every map, sparse, above a |z| threshold).
  const defaultThr = Math.max(2, table.threshold ?? 3);
  const mapThr = el("input#map-threshold", { type: "number", min: "2", max: "50", step: "0.5", value: String(defaultThr), "aria-describedby": "gallery-count" });
  let sparse = null; // decoded maps at the current threshold
  let sparseThr = defaultThr;

  // ---- cards (built when first shown) ------------------------------------------------------
  const PAGE = 60;
  let limit = PAGE;
  const cards = new Map();
  const getCard = (c) => {
    if (cards.has(c.id)) return cards.get(c.id);
    const canvas = el("canvas.thumb", { width: 1, height: 1, role: "img", "aria-label": `Map of network ${c.id}` });
    const card = el(
      "article.net-card",
      { dataset: { id: String(c.id) }, "data-testid": "network-card" },
      el("a.thumb-link", { href: `#/analysis/${id}/network/${c.id}`, "aria-label": `Open network ${c.id}`, tabindex: "-1" }, canvas),
      el("div.net-card-body",
        el("h3", el("a", { href: `#/analysis/${id}/network/${c.id}`, text: `Network ${c.id}` }), el("span.muted", { text: ownLayer(c) !== null ? ` · L${c.layer}` : " · all layers" })),
        el("p.net-name", { title: c.name === c.auto_name ? "Named after its top-activating tokens" : "Named by you", text: c.name ? `“${c.name}”` : "" }),
        el("p.net-stats",
          el("span", { title: "Key neurons", text: `${c.n_key} key` }),
          el("span", { title: "Stability across the FastICA restarts of this analysis", text: `stab ${fmtNum(c.stability)}` }),
          c.reproduced !== null && c.reproduced !== undefined
            ? el("span.reproduced", { title: "In how many of the seed check's other seeds this network's map came back (|corr| ≥ 0.9)", text: `seeds ${c.reproduced}/${table.check_seeds}` })
            : null,
          el("span", { title: "Peak |z|", text: `peak ${fmtNum(c.peak_z, 1)}` }),
        ),
        c.top_genre ? el("p.net-genre.small", { text: `${c.top_genre} (selectivity ${fmtNum(c.genre_selectivity)})` }) : null,
        labelSelect(id, c, () => apply()),
      ),
    );
    const entry = { card, canvas, c, drawnAt: null };
    cards.set(c.id, entry);
    return entry;
  };
  const gridEl = el("div.gallery#gallery", { "aria-label": "Networks" });
  const more = el("button.btn.btn-secondary#gallery-more", { type: "button", hidden: true });
  more.addEventListener("click", () => {
    limit += PAGE;
    apply();
  });

  let shownEntries = [];
  function draw(entry) {
    const stamp = `${sparseThr}:${layout.name}`;
    if (!sparse || entry.drawnAt === stamp) return;
    const { maps } = sparse;
    const position = table.components.indexOf(entry.c); // /maps is in component order
    const k = maps.n_components === comps.length ? position : entry.c.id;
    // the layers of this map's slices: every analysed layer (whole-model) or the component's own
    const mapLayers = maps.map_layers || [maps.component_layer?.[k] ?? entry.c.layer];
    const positions = mapLayers.map((l) => layout.positions[l]);
    drawMosaicCanvas(entry.canvas, sparse.dense(k), maps.n_map_layers, maps.width, maps.grid, { threshold: 0, positions });
    entry.drawnAt = stamp;
    entry.card.dataset.drawn = "true";
    entry.card.dataset.layout = layout.name;
  }
  function drawShown() {
    for (const e of shownEntries) draw(e);
    gridEl.dataset.complete = String(Boolean(sparse));
  }

  async function loadMaps(thr) {
    gridEl.dataset.complete = "false";
    try {
      const maps = await getMaps(id, thr === table.threshold ? null : thr);
      if (!ctx.alive()) return;
      sparse = { maps, ...decodeSparseMaps(maps) };
      sparseThr = thr;
      drawShown();
      updateCount();
    } catch (err) {
      if (ctx.alive()) showError(`The network maps could not be loaded: ${err.message}`);
    }
  }
  mapThr.addEventListener("change", () => {
    const t = Number(mapThr.value);
    if (!(t >= 2)) {
      showError("The map threshold must be a number of at least 2.");
      return;
    }
    loadMaps(t);
  });

  let lastShown = [];
  function updateCount() {
    const left = lastShown.length - shownEntries.length;
    count.textContent = `${lastShown.length} of ${comps.length} networks shown${left > 0 ? ` (first ${shownEntries.length} on this page)` : ""} · maps at |z| > ${fmtNum(sparseThr, 1)}; blue negative, orange positive`;
  }
  function apply() {
    const layer = layerSelect.value;
    const nameText = nameFilter.value.trim().toLowerCase();
    const label = labelFilter.value;
    const genre = genreFilter.value;
    const size = Number(minSize.value) || 0;
    const stab = Number(minStab.value);
    const sel = Number(minSel.value);
    minStabOut.textContent = stab.toFixed(2);
    minSelOut.textContent = sel.toFixed(2);
    lastShown = comps
      .filter((c) => (layer === "" || String(ownLayer(c)) === layer)
        && (!nameText || (c.name || "").toLowerCase().includes(nameText))
        && (label === "" || (c.label || "unknown") === label)
        && (genre === "" || c.top_genre === genre)
        && (c.n_key || 0) >= size
        && (c.stability ?? 1) >= stab
        && (c.genre_selectivity ?? 0) >= sel)
      .sort(SORTS[sortSelect.value][1]);
    shownEntries = lastShown.slice(0, limit).map(getCard);
    gridEl.replaceChildren(...shownEntries.map((e) => e.card));
    const left = lastShown.length - shownEntries.length;
    more.hidden = left <= 0;
    more.textContent = `Show ${Math.min(PAGE, left)} more (${left} not shown)`;
    updateCount();
    drawShown();
  }
  const refilter = () => {
    limit = PAGE;
    apply();
  };
  controls.addEventListener("input", refilter);
  controls.addEventListener("change", refilter);

  root.append(el("section.card",
    el("h2", { text: "Network gallery" }),
    controls,
    el("div.controls",
      el("div.field.inline.map-thr", el("label", { for: "map-threshold", text: "Show map values with |z| above" }), mapThr),
      el("div.field.inline", el("label", { for: "layout", text: "Layout" }), layoutSelect(async (name) => {
        try {
          layout = await getLayout(id, name);
          if (ctx.alive()) drawShown();
        } catch (err) {
          showError(err);
        }
      }))),
    count, gridEl, el("div.actions", more)));
  apply();
  await loadMaps(defaultThr);
}
