// "Keep this working" (issue 22): on the prune page, a text to protect besides the calibration text (a genre
// of the analysis' corpus, another corpus, or pasted texts) and how (calibration mixing, or forcing the
// networks most selective for it, with the server's proposal: a job of kind `proposal`, followed like the
// others); on the result page, held-out perplexity of
// both domains, dense vs pruned vs the same pruning without protection. The ways, their help and the
// numbers they cite are the server's (GET /api/options `protect_by`, from BENCHMARKS.md §10).
import { api, urls } from "../api.js";
import { el, fmtInt, fmtNum } from "../dom.js";
import { jobProgress } from "./common.js";

// ---- the prune page's fieldset ------------------------------------------------------------------------
export function protectSection(analysisId, job, corpora, options) {
  const defaults = options.pruning;
  const own = corpora.find((c) => c.name === job.params?.corpus);
  const available = corpora.filter((c) => c.available);
  const on = el("input#protect-on", { type: "checkbox" });
  const source = (value, text, checked = false) => el("label.check", el("input", { type: "radio", name: "protect-source", value, id: `protect-src-${value}`, checked }), ` ${text}`);
  const genre = el("select#protect-genre", { "aria-label": "Genre of the analysis' corpus" },
    (own?.labels || []).map((g) => el("option", { value: g, text: g })));
  const corpus = el("select#protect-corpus", { "aria-label": "Corpus" }, available.map((c) => el("option", { value: c.name, text: c.description ? `${c.name} (${c.description})` : c.name })));
  const corpusGenre = el("select#protect-corpus-genre", { "aria-label": "Genre of that corpus" });
  const fillGenres = () => {
    const c = available.find((x) => x.name === corpus.value);
    corpusGenre.replaceChildren(el("option", { value: "", text: "all genres" }), ...(c?.labels || []).map((g) => el("option", { value: g, text: g })));
  };
  corpus.addEventListener("change", fillGenres);
  fillGenres();
  const texts = el("textarea#protect-texts", { rows: 4, placeholder: "One text per paragraph (separate texts by a blank line). With 10 or more, every tenth is held out to measure it.", "aria-label": "Texts to keep working" });
  const ways = options.protect_by.map((b) => el("label.check", { title: b.help },
    el("input", { type: "radio", name: "protect-by", value: b.name, id: `protect-by-${b.name}`, checked: b.name === defaults.protect_by }),
    ` ${b.label}${b.name === defaults.protect_by ? " (recommended, measured in BENCHMARKS §10)" : ""}`));
  const wayHelp = el("p.hint#protect-by-help");
  const n = el("input#protect-n", { type: "number", min: "1", max: "2048", step: "1", value: String(defaults.protect_networks), "aria-label": "Number of networks to force" });
  const propose = el("button.btn.btn-secondary#protect-propose", { type: "button", text: "Propose the networks" });
  const proposal = el("p.small#protect-proposal", { "aria-live": "polite" });
  const proposalProgress = el("div#protect-proposal-progress");
  const compare = el("input#protect-compare", { type: "checkbox" });
  const networksRow = el("div.inline-row#protect-networks-row", el("label", { for: "protect-n" }, "Networks to force "), n, propose);
  const body = el("div#protect-body", { hidden: true },
    el("div", source("genre", "a genre of the analysis' corpus", Boolean(own?.labels?.length)), genre),
    el("div", source("corpus", "another corpus (built-in or uploaded)", !own?.labels?.length), corpus, corpusGenre),
    el("div", source("texts", "texts I paste"), texts),
    el("div.checks", ways), wayHelp, networksRow, proposalProgress, proposal,
    el("label.check", { for: "protect-compare" }, compare, " also compute the same pruning without protection, for comparison ", el("span.muted.small", { text: "(one more pruning and evaluation in the same job)" })));
  const chosenWay = () => body.querySelector("input[name=protect-by]:checked")?.value || defaults.protect_by;
  const refresh = () => {
    body.hidden = !on.checked;
    const way = options.protect_by.find((b) => b.name === chosenWay());
    wayHelp.textContent = way ? `${way.label}: ${way.help}.` : "";
    networksRow.hidden = chosenWay() !== "networks";
    proposal.hidden = chosenWay() !== "networks";
    proposalProgress.hidden = chosenWay() !== "networks";
  };
  for (const input of [on, ...body.querySelectorAll("input[name=protect-by]")]) input.addEventListener("change", refresh);
  refresh();

  // what to protect, as the API's ProtectSource fields (throws with the reason when unusable)
  const what = () => {
    const src = body.querySelector("input[name=protect-source]:checked")?.value;
    if (src === "genre") {
      if (!genre.value) throw new Error("Keep this working: the analysis' corpus has no genres; choose another corpus or paste texts.");
      return { corpus: own.name, genres: [genre.value] };
    }
    if (src === "corpus") return corpusGenre.value ? { corpus: corpus.value, genres: [corpusGenre.value] } : { corpus: corpus.value };
    const list = texts.value.split(/\n\s*\n/).map((t) => t.trim()).filter(Boolean);
    if (!list.length) throw new Error("Keep this working: paste at least one text.");
    return { texts: list };
  };
  // the proposal is a job (the worker loads the model): its progress, then the ProtectProposal it made
  let stopWatch = null;
  const showProposal = (p) => {
    proposal.textContent = `Networks ${p.networks.join(", ")}: ${fmtInt(p.n_forced)} key neurons forced (per layer: ${p.forced_per_layer.join(", ")}). `
      + `A preview on ${p.calibration_docs} calibration and ${p.docs} protected documents; the pruning proposes again on its whole calibration, and its result lists what it forced.`;
    proposal.dataset.networks = p.networks.join(",");
    proposal.dataset.forced = String(p.n_forced);
  };
  const follow = (job) => {
    stopWatch?.();
    stopWatch = null;
    proposalProgress.replaceChildren();
    proposal.dataset.job = job.id;
    if (job.status === "succeeded") return showProposal(job.result);
    proposal.textContent = "Proposing: the worker measures both texts on the analysis' model…";
    const progress = jobProgress("proposals", job.id, {
      title: "Proposal in progress",
      onStatus: (j) => {
        if (j.status === "failed" || j.status === "cancelled") proposal.textContent = `No proposal: ${j.status === "failed" ? j.error || "the job failed" : "cancelled"}.`;
      },
      onDone: async (done) => {
        try {
          const full = done.result ? done : await api(urls.job("proposals", done.id));
          proposalProgress.replaceChildren();
          showProposal(full.result);
        } catch (err) {
          proposal.textContent = `No proposal: ${err.message}`;
        }
      },
    });
    proposalProgress.replaceChildren(progress.node);
    stopWatch = progress.stop;
  };
  propose.addEventListener("click", async () => {
    propose.disabled = true;
    for (const key of ["job", "networks", "forced"]) delete proposal.dataset[key];
    proposal.textContent = "Asking for a proposal…";
    try {
      follow(await api(urls.protectProposal(analysisId), { method: "POST", body: { ...what(), networks: Number(n.value) } }));
    } catch (err) {
      proposal.textContent = `No proposal: ${err.message}`;
    } finally {
      propose.disabled = false;
    }
  });
  return {
    node: el("fieldset.protect#protect", el("legend", { text: "Keep this working" }),
      el("label.check", { for: "protect-on" }, on, " also keep another text working (the calibration text is the analysis' corpus)"), body),
    // the request's `protect`, or undefined when off
    request: () => {
      if (!on.checked) return undefined;
      const req = { ...what(), by: chosenWay(), compare_unconstrained: compare.checked };
      if (req.by === "networks") req.networks = Number(n.value);
      return req;
    },
    stop: () => stopWatch?.(), // stops following a proposal job (the page is left)
  };
}

// ---- the result page's table --------------------------------------------------------------------------
export function protectResult(r, analysisCorpus) {
  const p = r.protect;
  if (!p) return null;
  const how = p.mixing
    ? `calibrated on ${p.mixing.calibration_docs} documents of the analysis' corpus + ${p.mixing.protect_docs} of ${p.source} (${fmtInt(p.mixing.protect_tokens)} of ${fmtInt(p.mixing.tokens)} tokens)`
    : p.proposal ? `networks ${p.proposal.networks.join(", ")} forced (${fmtInt(p.proposal.n_forced)} key neurons, the ${p.proposal.networks.length} most selective for it)` : "";
  const row = (key, name, d) => el("tr", { dataset: { domain: key } },
    el("th", { scope: "row", text: name }),
    el("td.num", { id: `protect-${key}-docs`, text: d ? String(d.n_docs) : "—" }),
    el("td.num", { id: `protect-${key}-dense`, text: d ? fmtNum(d.dense, 2) : "—" }),
    el("td.num", { id: `protect-${key}-pruned`, text: d ? fmtNum(d.pruned, 2) : "—" }),
    el("td.num", { id: `protect-${key}-unconstrained`, text: d && d.unconstrained != null ? fmtNum(d.unconstrained, 2) : "not computed" }));
  return el("section.card#protect-result", el("h2", { text: `Kept working: ${p.source}` }),
    el("p#protect-how", { text: `Protected ${p.by === "calibration" ? "by calibration mixing" : "by forcing networks"}: ${how}.` }),
    el("div.table-scroll", el("table.table#protect-table",
      el("thead", el("tr", ["Held-out perplexity", "Documents", "Dense", "Pruned (this model)", "Pruned without protection"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody",
        row("a", `calibration text (${analysisCorpus || "the analysis' corpus"})`, p.calibration_domain),
        row("b", `protected text (${p.source})`, p.protected_domain)))),
    el("p.caption", { text: "Each domain's held-out documents (every tenth document, never calibrated or protected on), 512-token windows of each document's first 512 tokens." }),
    p.notes.length ? el("ul.small#protect-notes", p.notes.map((t) => el("li", { text: t }))) : null);
}
