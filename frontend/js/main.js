// Entry point: hash router and global error handling.
//   #/new                                   new analysis + past jobs
//   #/analysis/{id}/overview                digital brain (mosaic of all layers)
//   #/analysis/{id}/gallery                 one small map per network
//   #/analysis/{id}/network/{k}             one network in detail
//   #/analysis/{id}/prune                   select networks, preview, start pruning
//   #/pruning/{id}                          pruning progress, results, downloads
import { api, getToken, setToken, urls } from "./api.js";
import { clear, clearError, el, showError } from "./dom.js";
import * as gallery from "./views/gallery.js";
import * as network from "./views/network.js";
import * as newAnalysis from "./views/new.js";
import * as overview from "./views/overview.js";
import * as prune from "./views/prune.js";
import * as pruning from "./views/pruning.js";

const ROUTES = [
  [/^#\/new$/, newAnalysis, () => ({})],
  [/^#\/analysis\/([\w-]+)\/?$/, overview, (m) => ({ id: m[1] })],
  [/^#\/analysis\/([\w-]+)\/overview$/, overview, (m) => ({ id: m[1] })],
  [/^#\/analysis\/([\w-]+)\/gallery$/, gallery, (m) => ({ id: m[1] })],
  [/^#\/analysis\/([\w-]+)\/network\/(\d+)$/, network, (m) => ({ id: m[1], k: Number(m[2]) })],
  [/^#\/analysis\/([\w-]+)\/prune$/, prune, (m) => ({ id: m[1] })],
  [/^#\/pruning\/([\w-]+)$/, pruning, (m) => ({ id: m[1] })],
];

let cleanup = null;
let generation = 0;

async function route() {
  const hash = location.hash || "#/new";
  if (!location.hash) history.replaceState(null, "", "#/new");
  if (typeof cleanup === "function") {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  cleanup = null;
  clearError();
  const root = document.getElementById("view");
  clear(root);
  const gen = ++generation;
  document.querySelectorAll(".topnav a").forEach((a) => a.removeAttribute("aria-current"));
  if (hash.startsWith("#/new")) document.querySelector('.topnav a[data-nav="new"]')?.setAttribute("aria-current", "page");
  for (const [pattern, view, params] of ROUTES) {
    const m = pattern.exec(hash.split("?")[0]);
    if (!m) continue;
    // `alive()` lets a view drop results that arrive after the user moved on.
    const ctx = { alive: () => gen === generation };
    try {
      const result = await view.render(root, params(m), ctx);
      if (gen === generation) cleanup = result;
      else if (typeof result === "function") result();
    } catch (err) {
      if (gen === generation) {
        showError(err);
        root.append(el("p.muted", { text: "This page could not be shown; see the message above." }));
      }
    }
    return;
  }
  root.append(el("section.card", el("h1", { text: "Page not found" }), el("p", "No page at ", el("code", { text: hash }), ". ", el("a", { href: "#/new", text: "Start a new analysis" }), ".")));
}

function setupToken() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-button").addEventListener("click", () => {
    input.value = getToken();
    dialog.showModal();
    input.focus();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") {
      setToken(input.value.trim());
      route();
      serverInfo();
    }
  });
}

async function serverInfo() {
  try {
    const health = await api(urls.health());
    const info = document.getElementById("server-info");
    info.textContent = `v${health.version} · ${health.device}`;
    if (health.workers === 0) {
      info.append(" · ", Object.assign(document.createElement("strong"), { className: "warn", textContent: "no worker running" }));
      info.title = "Jobs will wait in the queue until a worker runs: start the app with `python -m backend.serve` (or `python -m backend.worker`).";
    }
  } catch {
    /* the page itself reports API errors */
  }
}

window.addEventListener("error", (e) => showError(e.error || e.message));
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
document.getElementById("error-dismiss").addEventListener("click", clearError);
window.addEventListener("hashchange", route);
setupToken();
serverInfo();
route();
