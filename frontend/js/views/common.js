// Widgets shared by several views: job progress panel, waiting for an analysis, analysis tabs, label
// selector, downloads.
import { api, downloadFile, signedDownloadUrl, TERMINAL, urls, watchJob } from "../api.js";
import { el, fmtDuration, fmtPct, showError, showNotice } from "../dom.js";
import { putLabel } from "../store.js";

// The stages the worker reports (backend/app/services/analyses.py, prunings.py, protect.py; fnprune.pruning.job,
// recipe and protect), and "queued", which this view shows while a job waits.
const STAGE_NAMES = {
  queued: "Waiting in the queue",
  load: "Loading the model",
  capture: "Recording MLP activations",
  ica: "Running ICA",
  calibrate: "Measuring calibration activations",
  select: "Choosing the neurons to keep",
  prune: "Pruning",
  "calibrate heads": "Measuring attention heads",
  recover: "Recovering by distillation from the dense model",
  save: "Saving results",
  "evaluate dense": "Evaluating the dense model",
  "evaluate pruned": "Evaluating the pruned model",
  fidelity: "Measuring network fidelity",
  baselines: "Running baselines",
  ablate: "Scoring held-out text: dense, network zeroed, random control",
  "protected text": "Measuring the protected text",
};
const JOB_NAMES = { analyses: "analysis", prunings: "pruning", ablations: "ablation", proposals: "proposal" };

export function stageName(stage) {
  if (!stage) return "Starting";
  return STAGE_NAMES[stage] || stage.charAt(0).toUpperCase() + stage.slice(1).replace(/[_-]/g, " ");
}

export function statusBadge(status) {
  return el(`span.badge.status-${status}`, { text: status });
}

/**
 * A live progress panel for a job. Calls onDone(job) once when it succeeds.
 * Returns {node, stop}.
 */
export function jobProgress(kind, id, { onDone, onStatus, title } = {}) {
  const bar = el("div.progress-fill");
  const track = el("div.progress-track", { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0", "aria-label": "Progress" }, bar);
  const stage = el("strong.stage", { text: "Connecting…" });
  const pct = el("span.pct", { text: "0 %" });
  const eta = el("span.eta", { text: "" });
  const message = el("p.message.muted", { text: "" });
  const status = el("span.status-slot");
  const errorBox = el("p.job-error", { hidden: true });
  const cancel = el("button.btn.btn-secondary", { type: "button", text: "Cancel" });
  const node = el(
    "section.card.progress-card",
    { "aria-live": "polite", "data-testid": "job-progress" },
    el("div.progress-head", el("h2", { text: title || `${JOB_NAMES[kind].charAt(0).toUpperCase()}${JOB_NAMES[kind].slice(1)} in progress` }), status),
    el("div.progress-line", stage, pct, eta),
    track,
    message,
    errorBox,
    el("div.actions", cancel),
  );
  let finished = false;
  let lastStatus = null;
  let lastJob = null;
  // ETA of the stage when the server gives one; always the time the job has been running.
  const tick = () => {
    const job = lastJob;
    if (!job) return;
    const parts = [];
    if (job.status === "running" && job.eta_s !== null && job.eta_s !== undefined) parts.push(`about ${fmtDuration(job.eta_s)} left in this stage`);
    if (job.started_at && !TERMINAL.has(job.status)) parts.push(`running for ${fmtDuration((Date.now() - Date.parse(job.started_at)) / 1000)}`);
    eta.textContent = parts.join(" · ");
  };
  const ticker = setInterval(tick, 1000);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(urls.job(kind, id), { method: "DELETE" });
      showNotice("Cancel requested.");
    } catch (err) {
      showError(err);
      cancel.disabled = false;
    }
  });
  const stop = watchJob(
    kind,
    id,
    (job) => {
      const p = Math.max(0, Math.min(1, job.progress || 0));
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      track.setAttribute("aria-valuenow", String(Math.round(100 * p)));
      stage.textContent = job.status === "queued" ? stageName("queued") : stageName(job.stage);
      pct.textContent = fmtPct(p, 0);
      lastJob = job;
      tick();
      message.textContent = job.message || "";
      status.replaceChildren(statusBadge(job.status));
      if (job.status !== lastStatus) {
        lastStatus = job.status;
        onStatus?.(job);
      }
      if (TERMINAL.has(job.status)) {
        cancel.hidden = true;
        if (job.status === "failed") {
          errorBox.hidden = false;
          errorBox.textContent = `Failed: ${job.error || "no reason given"}`;
          showError(`The ${JOB_NAMES[kind]} failed: ${job.error || "no reason given"}`);
        } else if (job.status === "cancelled") {
          errorBox.hidden = false;
          errorBox.textContent = "Cancelled.";
        } else if (!finished) {
          finished = true;
          onDone?.(job);
        }
      }
    },
    (err) => showError(err),
  );
  return {
    node,
    stop: () => {
      clearInterval(ticker);
      stop();
    },
  };
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

export function analysisTabs(id, active, job) {
  const tabs = [
    ["overview", "Overview"],
    ["gallery", "Network gallery"],
    ["prune", "Select & prune"],
  ];
  const p = job?.params || {};
  return el(
    "div.analysis-head",
    el(
      "div.analysis-title",
      el("h1", { text: `Analysis ${id}` }),
      job ? el("p.muted", { text: [p.model, p.corpus, p.n_components && `${p.n_components} components${p.mode === "per-layer" ? " per layer" : ""}`, p.mode].filter(Boolean).join(" · ") }) : null,
    ),
    el(
      "nav.tabs",
      { "aria-label": "Analysis sections" },
      tabs.map(([key, label]) =>
        el("a.tab", { href: `#/analysis/${id}/${key}`, "aria-current": key === active ? "page" : undefined, text: label }),
      ),
    ),
  );
}

export const LABELS = ["unknown", "signal", "noise"];

/** A component's own layer, or null when it spans all layers (whole-model mode sends -1 or null). */
export function ownLayer(c) {
  return c && Number.isInteger(c.layer) && c.layer >= 0 ? c.layer : null;
}

/** <select> to label a component; PUTs the change. */
export function labelSelect(analysisId, component, onChange) {
  const select = el(
    "select.label-select",
    { "aria-label": `Label of network ${component.id}`, dataset: { label: component.label || "unknown" } },
    LABELS.map((l) => el("option", { value: l, text: l, selected: (component.label || "unknown") === l })),
  );
  select.addEventListener("change", async () => {
    const previous = component.label || "unknown";
    const value = select.value;
    select.disabled = true;
    try {
      await putLabel(analysisId, component.id, value);
      component.label = value;
      select.dataset.label = value;
      showNotice(`Network ${component.id} labelled ${value}.`);
      onChange?.(value);
    } catch (err) {
      select.value = previous;
      showError(err);
    } finally {
      select.disabled = false;
    }
  });
  return select;
}

/** A download button (fetches with the token so errors show in the banner). */
export function downloadButton(path, filename, label) {
  const button = el("button.btn.btn-secondary.download", { type: "button", text: label, dataset: { artifact: filename } });
  button.addEventListener("click", async () => {
    button.disabled = true;
    const old = button.textContent;
    button.textContent = `${old} …`;
    try {
      if (filename.endsWith(".zip")) {
        // Big streamed file: let the browser stream it to disk, through a short-lived signed link.
        const href = await signedDownloadUrl(path);
        const a = el("a", { href, download: filename });
        document.body.append(a);
        a.click();
        a.remove();
      } else {
        await downloadFile(path, filename);
      }
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
      button.textContent = old;
    }
  });
  return button;
}

/** A list of downloads: items [{path, filename, label, note (string or Node)}]. */
export function downloadsList(items) {
  return el(
    "ul.downloads",
    items.map((it) => el("li", el("div.download-row", downloadButton(it.path, it.filename, it.label), el("div.download-note", it.note)))),
  );
}

export function analysisDownloads(id) {
  return downloadsList([
    {
      path: urls.download("analyses", id, "maps"),
      filename: `fnprune-${id}-maps.nii.gz`,
      label: "Maps (NIfTI)",
      note: el("span", "4-D NIfTI: x, y = neuron grid, z = layer, t = component. Open with ", el("code", { text: "nilearn.image.load_img(path)" }), " or FSLeyes."),
    },
    {
      path: urls.download("analyses", id, "labels"),
      filename: `fnprune-${id}-labels.txt`,
      label: "Labels (FIX)",
      note: "Your signal / noise labels in FSL FIX's text format (the last line lists the noise components, 1-based).",
    },
    {
      path: urls.download("analyses", id, "masks"),
      filename: `fnprune-${id}-masks.json`,
      label: "Key-neuron masks (JSON)",
      note: el("span", "Per layer, the indices of the key neurons: ", el("code", { text: "json.load(open(path))" }), "."),
    },
    {
      path: urls.download("analyses", id, "report"),
      filename: `fnprune-${id}-report.html`,
      label: "Analysis report (HTML)",
      note: "A self-contained report of the analysis; open it in any browser.",
    },
  ]);
}
