// The network page's "What does this network do?" panel: zero the network's key neurons in the dense model
// (POST /api/analyses/{id}/ablations, a job) and show the perplexity change per genre next to the same-size
// random-neuron control, and the tokens whose prediction falls most.
import { api, urls } from "../api.js";
import { drawAblation } from "../charts.js";
import { el, fmtInt, fmtNum, showError } from "../dom.js";
import { jobProgress } from "./common.js";

/** A probability as the panel prints it (also mirrored by the e2e test). */
export function fmtProb(p) {
  if (p === null || p === undefined) return "—";
  return p >= 0.001 ? p.toFixed(4) : p.toExponential(1);
}

/** `1.234× [1.100, 1.300]`: a paired ratio with its 95% interval. */
export function fmtRatio(r) {
  return r ? `${fmtNum(r.ratio, 3)}× [${fmtNum(r.low, 3)}, ${fmtNum(r.high, 3)}]` : "—";
}

const visible = (text) => String(text ?? "").replace(/\r?\n/g, "⏎").replace(/\t/g, "⇥");
const visibleToken = (text) => visible(text).replace(/^ +$/, (s) => "␣".repeat(s.length)) || "∅";

/** What exactly is done, in words (before the run: from the network's table row; after: from the result). */
function whatText(n, threshold, r = null) {
  const where = r ? ` (${r.neurons_per_layer.map((c, l) => (c ? `layer ${l}: ${c}` : null)).filter(Boolean).join(", ")})` : "";
  const scored = r
    ? `Scored on ${r.all.n_docs} held-out documents of the analysis' corpus (ones it did not read), the first ${r.window} tokens of each; random seed ${r.seed}.`
    : "Scored on held-out documents of the analysis' corpus (ones it did not read).";
  return `Zeroes the ${fmtInt(n)} key neurons (|z| > ${fmtNum(threshold)}) of this network in the dense model${where}; control: ${fmtInt(n)} random neurons in the same layers. Nothing is removed or saved. ${scored}`;
}

export function ablationPanel(analysisId, k, nKey, threshold, ctx) {
  const what = el("p.caption#ablation-what", { text: whatText(nKey, threshold) });
  const start = el("button.btn.btn-primary#ablate-start", { type: "button", text: "Ablate this network", disabled: nKey === 0 });
  const progressSlot = el("div#ablation-progress");
  const resultSlot = el("div#ablation-result");
  const node = el(
    "section.card#ablation",
    el("h3", { text: "What does this network do?" }),
    what,
    nKey === 0 ? el("p.muted.small", { text: "This network has no key neuron at the analysis' threshold: there is nothing to zero." }) : null,
    el("div.actions", start),
    progressSlot,
    resultSlot,
  );
  let stopWatch = null;

  const show = (job) => {
    stopWatch?.();
    stopWatch = null;
    resultSlot.replaceChildren();
    if (job.status === "succeeded") {
      progressSlot.replaceChildren();
      renderResult(job.result);
      return;
    }
    const progress = jobProgress("ablations", job.id, {
      title: "Ablation in progress",
      onDone: async (done) => {
        if (!ctx.alive()) return;
        const full = done.result ? done : await api(urls.job("ablations", done.id));
        if (ctx.alive()) show(full);
      },
    });
    progressSlot.replaceChildren(progress.node);
    stopWatch = progress.stop;
  };

  const renderResult = (r) => {
    what.textContent = whatText(r.n_neurons, r.threshold, r);
    const rows = [...r.genres, r.all];
    const a = r.all;
    const plot = el("div.plot#ablation-plot");
    const table = el("div.table-scroll", el("table.table#ablation-table",
      el("thead", el("tr", ["Genre", "Documents", "Dense PPL", "Network zeroed PPL", "Network zeroed / dense", "Random zeroed PPL", "Random zeroed / dense"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", rows.map((g) => el("tr", { dataset: { genre: g.genre } },
        el("th", { scope: "row", text: g.genre }),
        el("td.num.abl-docs", { text: String(g.n_docs) }),
        el("td.num.abl-dense", { text: fmtNum(g.dense, 2) }),
        el("td.num.abl-network", { text: fmtNum(g.network, 2) }),
        el("td.num.abl-network-ratio", { text: fmtRatio(g.network_vs_dense) }),
        el("td.num.abl-random", { text: fmtNum(g.random, 2) }),
        el("td.num.abl-random-ratio", { text: fmtRatio(g.random_vs_dense) }))))));
    const summary = el("p#ablation-summary", { text: `Over all ${a.n_docs} documents, perplexity with this network zeroed / with the random control zeroed: ${fmtRatio(a.network_vs_random)} (paired 95% bootstrap interval over documents; above 1: the network matters more than as many random neurons).` });
    const tokens = r.top_tokens.length
      ? el("ol.top-tokens.ablation-tokens#ablation-tokens", r.top_tokens.map((t) => el("li", { dataset: { doc: t.doc, position: String(t.position) } },
        el("span.tt-context", el("span.ctx", { text: visible(t.left) }), el("mark", { text: visibleToken(t.token) })),
        el("span.tt-value.abl-p", { text: `p ${fmtProb(t.p_dense)} → ${fmtProb(t.p_network)}` }),
        el("span.tt-meta.muted.small.abl-control", { text: `control ${fmtProb(t.p_random)} · ${t.label} · ${t.doc}` }))))
      : el("p.muted", { text: "No tokens were asked for." });
    resultSlot.replaceChildren(
      summary,
      el("h4", { text: "Perplexity change per genre (ratio to the dense model; 1 = no change)" }), plot, table,
      el("h4", { text: "Tokens whose probability falls most with the network zeroed (p of the token that came next: dense → network zeroed; the random control's)" }), tokens,
    );
    drawAblation(plot, rows).catch(showError);
  };

  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const job = await api(urls.ablations(analysisId), { method: "POST", body: { networks: [k] } });
      if (ctx.alive()) show(job);
    } catch (err) {
      showError(err);
    } finally {
      start.disabled = nKey === 0;
    }
  });

  // an earlier ablation of exactly this network (the newest) is shown as it is, finished or not
  api(urls.ablations(analysisId)).then((jobs) => {
    const earlier = (jobs || []).find((j) => j.params.networks.length === 1 && j.params.networks[0] === k && j.status !== "failed" && j.status !== "cancelled");
    if (earlier && ctx.alive() && !resultSlot.hasChildNodes() && !progressSlot.hasChildNodes()) show(earlier);
  }).catch(showError);

  return { node, stop: () => stopWatch?.() };
}
