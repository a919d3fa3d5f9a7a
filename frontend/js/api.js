// Fetch wrapper for the fnprune HTTP API (backend/API.md), and every URL of it this client uses (`urls`).
// Every failure becomes a thrown Error whose message is a readable sentence
// (the API's `detail` when it sent one).

const TOKEN_KEY = "fnprune.token";

const seg = (value) => encodeURIComponent(String(value));

/** `path` with the query parameters that are set (null, undefined and "" are left out). */
function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** The API's paths (backend/API.md); `kind` is "analyses", "prunings", "ablations" or "proposals". Views never build a URL. */
export const urls = {
  health: () => "/api/health",
  options: () => "/api/options",
  models: () => "/api/models",
  corpora: () => "/api/corpora",
  downloadLinks: () => "/api/download-links",
  jobs: (kind) => `/api/${kind}`,
  job: (kind, id) => `/api/${kind}/${seg(id)}`,
  jobEvents: (kind, id) => `${urls.job(kind, id)}/events`,
  download: (kind, id, artifact) => `${urls.job(kind, id)}/download/${seg(artifact)}`,
  gguf: (id, type = "f16") => withQuery(urls.download("prunings", id, "gguf"), { type }),
  networks: (id) => `${urls.job("analyses", id)}/networks`,
  network: (id, k, threshold = null) => withQuery(`${urls.networks(id)}/${seg(k)}`, { threshold }),
  maps: (id, threshold = null) => withQuery(`${urls.job("analyses", id)}/maps`, { threshold }),
  overview: (id) => `${urls.job("analyses", id)}/overview`,
  layout: (id, name) => withQuery(`${urls.job("analyses", id)}/layout`, { name }),
  labels: (id) => `${urls.job("analyses", id)}/labels`,
  preview: (id) => `${urls.job("analyses", id)}/preview`,
  protectProposal: (id) => `${urls.job("analyses", id)}/protect-proposal`, // POST starts one; the job is urls.job("proposals", …)
  ablations: (id) => `${urls.job("analyses", id)}/ablations`, // POST starts one; the job is urls.job("ablations", …)
};

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(message, { status = 0, field = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.field = field;
  }
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function errorFrom(response) {
  let detail = "";
  let field = null;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    else if (body.detail) detail = JSON.stringify(body.detail);
    field = body.field ?? null;
  } catch {
    /* not JSON */
  }
  if (!detail) detail = `${response.status} ${response.statusText || "error"}`;
  if (response.status === 401) detail += " — this server needs an API token: set it with the Token button at the top right.";
  return new ApiError(detail, { status: response.status, field });
}

/**
 * Call the API. `body` is sent as JSON, `form` as multipart FormData.
 * Returns the parsed JSON (or null for an empty body).
 */
export async function api(path, { method = "GET", body, form, signal } = {}) {
  const init = { method, signal, headers: authHeaders() };
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Cannot reach the fnprune server (${method} ${path}): ${err.message}`);
  }
  if (!response.ok) throw await errorFrom(response);
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(`The server sent a reply that is not JSON for ${method} ${path}.`);
  }
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/**
 * Follow a job (kind = "analyses" | "prunings" | "ablations" | "proposals") until it reaches a terminal status.
 * Uses the SSE stream (read with fetch so the bearer token is sent); falls back to
 * polling every second if the stream cannot be opened or breaks.
 * Returns a function that stops watching.
 */
export function watchJob(kind, id, onUpdate, onError) {
  const controller = new AbortController();
  let stopped = false;
  let last = null;
  const deliver = (job) => {
    last = job;
    if (!stopped) onUpdate(job);
  };

  async function poll() {
    while (!stopped) {
      try {
        const job = await api(urls.job(kind, id), { signal: controller.signal });
        deliver(job);
        if (TERMINAL.has(job.status)) return;
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        onError?.(err);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  async function stream() {
    let response;
    try {
      response = await fetch(urls.jobEvents(kind, id), {
        headers: authHeaders({ Accept: "text/event-stream" }),
        signal: controller.signal,
      });
    } catch (err) {
      if (stopped || err.name === "AbortError") return;
      return poll();
    }
    if (!response.ok || !response.body) {
      if (response.status === 404) {
        onError?.(await errorFrom(response));
        return;
      }
      return poll();
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let sep;
        while ((sep = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const chunk = buffer.slice(0, sep);
          buffer = buffer.slice(sep).replace(/^\r?\n\r?\n/, "");
          const data = chunk
            .split(/\r?\n/)
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).trimStart())
            .join("\n");
          if (!data) continue;
          try {
            deliver(JSON.parse(data));
          } catch {
            /* ignore a malformed event */
          }
        }
      }
    } catch (err) {
      if (stopped || err.name === "AbortError") return;
    }
    // The stream ended: if the job is not finished, keep going by polling.
    if (!stopped && !(last && TERMINAL.has(last.status))) return poll();
  }

  stream();
  return () => {
    stopped = true;
    controller.abort();
  };
}

/**
 * A URL the browser can follow for a download (a plain link streams a large file to disk).
 * With a token set, asks the server for a short-lived signed link, so the token never
 * appears in a URL (browser history, access logs).
 */
export async function signedDownloadUrl(path) {
  if (!getToken()) return path;
  const link = await api(urls.downloadLinks(), { method: "POST", body: { path } });
  return link.url;
}

/** Download a file from the API with the auth header, as a browser download. */
export async function downloadFile(path, filename) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders() });
  } catch (err) {
    throw new ApiError(`Cannot reach the fnprune server to download ${filename}: ${err.message}`);
  }
  if (!response.ok) throw await errorFrom(response);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : filename;
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}
