// Screen 1: start a new analysis; live progress; past analyses and prunings.
import { api, urls } from "../api.js";
import { el, fmtPct, fmtTime, showError, showNotice } from "../dom.js";
import { getOptions } from "../store.js";
import { jobProgress, statusBadge } from "./common.js";

// The presets, samplings, modes and the default model and corpus are the server's (GET /api/options,
// fnprune.options): Quick demo, a few short texts spread over every genre (the form starts with it), and
// Paper, the paper's texts in corpus order.

function field(id, label, input, hint) {
  return el("div.field", el("label", { for: id, text: label }), input, hint ? el("p.hint", { id: `${id}-hint`, text: hint }) : null);
}

function numberInput(id, value, min, max, step = 1) {
  return el("input", { id, name: id, type: "number", value: String(value), min: String(min), max: String(max), step: String(step), required: true });
}

export async function render(root, _params, ctx) {
  const stops = [];
  const [models, corpora, options] = await Promise.all([api(urls.models()), api(urls.corpora()), getOptions()]);
  if (!ctx.alive()) return;
  const presets = Object.fromEntries(options.presets.map((p) => [p.name, p]));
  const start = presets.quick || options.analysis;

  // ---- form -------------------------------------------------------------------------------
  const modelSelect = el(
    "select#model",
    { name: "model", required: true },
    models.map((m) =>
      el("option", { value: m.name, text: m.available === false ? `${m.name} (not available)` : m.name, disabled: m.available === false, title: m.description || "" }),
    ),
  );
  const preferred = models.find((m) => m.name === options.analysis.model && m.available !== false) || models.find((m) => m.available !== false);
  if (preferred) modelSelect.value = preferred.name;
  const modelHint = el("p.hint", { text: "" });
  const updateModelHint = () => (modelHint.textContent = models.find((m) => m.name === modelSelect.value)?.description || "");
  modelSelect.addEventListener("change", updateModelHint);
  updateModelHint();

  const corpusSelect = el("select#corpus", { name: "corpus", required: true });
  const genreBox = el("fieldset.genres", { hidden: true });
  const corpusHint = el("p.hint", { text: "" });
  let corpusList = corpora;
  const fillCorpora = (selected) => {
    corpusSelect.replaceChildren(
      ...corpusList.map((c) =>
        el("option", { value: c.name, text: c.available === false ? `${c.name} (not available)` : c.name, disabled: c.available === false }),
      ),
    );
    const pick = selected || corpusList.find((c) => c.name === options.analysis.corpus && c.available !== false)?.name || corpusList.find((c) => c.available !== false)?.name;
    if (pick) corpusSelect.value = pick;
    updateCorpus();
  };
  const updateCorpus = () => {
    const c = corpusList.find((x) => x.name === corpusSelect.value);
    corpusHint.textContent = c ? `${c.description ? `${c.description} · ` : ""}${c.n_documents ?? "?"} documents` : "";
    const labels = c?.labels || [];
    genreBox.hidden = labels.length < 2;
    genreBox.replaceChildren(
      el("legend", { text: "Genres (none ticked = all)" }),
      el(
        "div.checks",
        labels.map((g) => el("label.check", el("input", { type: "checkbox", name: "genre", value: g }), ` ${g}`)),
      ),
    );
  };
  corpusSelect.addEventListener("change", updateCorpus);
  fillCorpora();

  const upload = el("input#upload", { type: "file", accept: ".txt,.jsonl,text/plain,application/jsonl", "aria-describedby": "upload-hint" });
  const uploadStatus = el("span.muted.small", { "aria-live": "polite" });
  upload.addEventListener("change", async () => {
    const file = upload.files?.[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file, file.name);
    uploadStatus.textContent = `Uploading ${file.name}…`;
    try {
      const created = await api(urls.corpora(), { method: "POST", form });
      corpusList = await api(urls.corpora());
      if (!corpusList.some((c) => c.name === created.name)) corpusList.push({ ...created, available: true, description: file.name });
      fillCorpora(created.name);
      uploadStatus.textContent = `Uploaded ${file.name}: ${created.n_documents} documents.`;
      showNotice(`Corpus ${created.name} added.`);
    } catch (err) {
      uploadStatus.textContent = `Upload of ${file.name} failed.`;
      // "file: is empty" -> "notes.txt is empty"
      let reason = err.message;
      if (err.field && reason.startsWith(`${err.field}: `)) reason = reason.slice(err.field.length + 2);
      showError(`Upload failed: ${/^(is|looks|has|contains|was) /.test(reason) ? `${file.name} ${reason}` : reason}`);
    } finally {
      upload.value = "";
    }
  });

  const nTexts = numberInput("n_texts", start.n_texts, 1, 100000);
  const sampling = el("select#sampling", { name: "sampling" }, options.samplings.map((s) => el("option", { value: s.name, text: s.help })));
  sampling.value = start.sampling;
  const maxTokens = numberInput("max_tokens", start.max_tokens, 8, 8192);
  const nComponents = numberInput("n_components", start.n_components, 2, 4096);
  const nRuns = numberInput("n_runs", start.n_runs ?? 1, 1, 50);
  const seed = numberInput("seed", 0, 0, 2 ** 31 - 1);
  const checkSeeds = numberInput("check_seeds", 0, 0, 10);
  const modeBox = el(
    "fieldset.mode",
    el("legend", { text: "ICA mode" }),
    options.modes.map((m) => el("label.check", el("input", { type: "radio", name: "mode", value: m.name, checked: m.name === options.analysis.mode }), ` ${m.label} `, el("span.muted.small", { text: `(${m.help})` }))),
  );

  const applyPreset = (key) => {
    const p = presets[key];
    nTexts.value = String(p.n_texts);
    maxTokens.value = String(p.max_tokens);
    nComponents.value = String(p.n_components);
    nRuns.value = String(p.n_runs);
    sampling.value = p.sampling;
    const which = options.samplings.find((s) => s.name === p.sampling)?.help || p.sampling;
    showNotice(`${p.label} preset: ${p.n_texts} texts × ${p.max_tokens} tokens (${which}), ${p.n_components} components.`);
  };
  const presetButtons = el(
    "div.presets",
    { role: "group", "aria-label": "Presets" },
    el("span.muted", { text: "Presets:" }),
    options.presets.map((p) => el("button.btn.btn-secondary", { type: "button", onclick: () => applyPreset(p.name), text: p.label })),
  );

  const startButton = el("button.btn.btn-primary#start", { type: "submit", text: "Start analysis" });
  const progressSlot = el("div.progress-slot");
  const form = el(
    "form.card.new-form",
    { novalidate: false },
    el("h1", { text: "New analysis" }),
    el("p.lead", { text: "Record the MLP neurons of a language model on calibration text, decompose them with ICA into functional networks, then prune the model while keeping the networks you choose." }),
    presetButtons,
    el(
      "div.grid-2",
      el("div", field("model", "Model", modelSelect), modelHint),
      el(
        "div",
        field("corpus", "Corpus", corpusSelect),
        corpusHint,
        el("div.field.upload", el("label", { for: "upload", text: "…or upload a corpus (.txt or .jsonl)" }), upload, el("p.hint#upload-hint", { text: ".txt: one document per blank-line-separated paragraph; .jsonl: {\"text\": ..., \"label\": ...} per line." }), uploadStatus),
      ),
    ),
    genreBox,
    el(
      "div.grid-3",
      field("n_texts", "Texts", nTexts),
      field("sampling", "Which texts", sampling),
      field("max_tokens", "Max tokens per text", maxTokens),
      field("n_components", "Components", nComponents, "per layer in per-layer mode; in total in whole-model mode"),
      field("n_runs", "Document batches", nRuns, "disjoint batches analysed separately, their key neurons pooled"),
      field("seed", "Seed", seed),
      field("check_seeds", "Seed check", checkSeeds, "other seeds to refit each layer with: which networks come back (per-layer mode; that many times slower)"),
      modeBox,
    ),
    el("div.actions", startButton),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    const genres = [...genreBox.querySelectorAll('input[name="genre"]:checked')].map((i) => i.value);
    const body = {
      model: modelSelect.value,
      corpus: corpusSelect.value,
      genres: genres.length && !genreBox.hidden ? genres : null,
      n_texts: Number(nTexts.value),
      max_tokens: Number(maxTokens.value),
      n_components: Number(nComponents.value),
      mode: form.querySelector('input[name="mode"]:checked').value,
      n_runs: Number(nRuns.value),
      seed: Number(seed.value),
      sampling: sampling.value,
      check_seeds: Number(checkSeeds.value),
    };
    startButton.disabled = true;
    try {
      const job = await api(urls.jobs("analyses"), { method: "POST", body });
      const progress = jobProgress("analyses", job.id, {
        title: `Analysis ${job.id}`,
        onStatus: () => refreshLists(),
        onDone: () => {
          if (ctx.alive()) location.hash = `#/analysis/${job.id}/overview`;
        },
      });
      stops.push(progress.stop);
      progressSlot.replaceChildren(progress.node);
      progress.node.scrollIntoView({ block: "nearest" });
      refreshLists();
    } catch (err) {
      showError(err);
    } finally {
      startButton.disabled = false;
    }
  });

  // ---- past jobs --------------------------------------------------------------------------
  const analysesSlot = el("div");
  const pruningsSlot = el("div");
  async function refreshLists() {
    try {
      const [analyses, prunings] = await Promise.all([api(urls.jobs("analyses")), api(urls.jobs("prunings"))]);
      if (!ctx.alive()) return;
      analysesSlot.replaceChildren(analysesTable(analyses));
      pruningsSlot.replaceChildren(pruningsTable(prunings));
    } catch (err) {
      if (ctx.alive()) showError(err);
    }
  }

  root.append(
    form,
    progressSlot,
    el("section.card", el("h2", { text: "Past analyses" }), analysesSlot),
    el("section.card", el("h2", { text: "Past prunings" }), pruningsSlot),
  );
  await refreshLists();
  const timer = setInterval(refreshLists, 5000);
  return () => {
    clearInterval(timer);
    stops.forEach((s) => s());
  };
}

function analysesTable(jobs) {
  if (!jobs.length) return el("p.muted", { text: "No analyses yet." });
  return el(
    "table.table#past-analyses",
    el("thead", el("tr", ["Analysis", "Status", "Model", "Corpus", "Texts × tokens", "Components", "Mode", "Created"].map((h) => el("th", { scope: "col", text: h })))),
    el(
      "tbody",
      jobs.map((j) => {
        const p = j.params || {};
        return el(
          "tr",
          el("td", el("a", { href: `#/analysis/${j.id}/overview`, text: j.id })),
          el("td", statusBadge(j.status), j.status === "running" ? ` ${fmtPct(j.progress, 0)}` : ""),
          el("td", { text: p.model ?? "—" }),
          el("td", { text: p.corpus ?? "—" }),
          el("td", { text: `${p.n_texts ?? "?"} × ${p.max_tokens ?? "?"}` }),
          el("td", { text: p.n_components ?? "—" }),
          el("td", { text: p.mode ?? "—" }),
          el("td", { text: fmtTime(j.created_at) }),
        );
      }),
    ),
  );
}

function pruningsTable(jobs) {
  if (!jobs.length) return el("p.muted", { text: "No prunings yet." });
  return el(
    "table.table#past-prunings",
    el("thead", el("tr", ["Pruning", "Status", "Analysis", "Target", "Created"].map((h) => el("th", { scope: "col", text: h })))),
    el(
      "tbody",
      jobs.map((j) => {
        const p = j.params || {};
        const target = p.target_ratio != null ? `ratio ${fmtPct(p.target_ratio, 0)}` : p.threshold != null ? `|z| ≥ ${p.threshold}` : "—";
        return el(
          "tr",
          el("td", el("a", { href: `#/pruning/${j.id}`, text: j.id })),
          el("td", statusBadge(j.status)),
          el("td", p.analysis_id ? el("a", { href: `#/analysis/${p.analysis_id}/overview`, text: p.analysis_id }) : "—"),
          el("td", { text: target }),
          el("td", { text: fmtTime(j.created_at) }),
        );
      }),
    ),
  );
}
