// Cached reads of an analysis' data, so moving between views does not refetch everything.
import { api, urls } from "./api.js";

const cache = new Map();

function cached(key, load) {
  if (!cache.has(key)) {
    const promise = load().catch((err) => {
      cache.delete(key);
      throw err;
    });
    cache.set(key, promise);
  }
  return cache.get(key);
}

export function invalidate(prefix) {
  for (const key of [...cache.keys()]) if (key.startsWith(prefix)) cache.delete(key);
}

/** fnprune's names, help texts and defaults (GET /api/options): fetched once per page load. */
export const getOptions = () => cached("options", () => api(urls.options()));

export const getNetworks = (id) => cached(`${id}:networks`, () => api(urls.networks(id)));
/** Every component's map, sparse (|z| > threshold), from GET /maps. */
export function getMaps(id, threshold = null) {
  return cached(`${id}:maps:${threshold ?? ""}`, () => api(urls.maps(id, threshold)));
}
export const getOverview = (id) => cached(`${id}:overview`, () => api(urls.overview(id)));

/** One component's detail; threshold null = the analysis' own threshold. */
export function getNetwork(id, k, threshold = null) {
  return cached(`${id}:network:${k}:${threshold ?? ""}`, () => api(urls.network(id, k, threshold)));
}

/** Update the cached component table after a label change. */
export async function applyLabels(id, labels) {
  const key = `${id}:networks`;
  if (!cache.has(key)) return;
  const table = await cache.get(key);
  for (const c of table.components) if (labels[String(c.id)] !== undefined) c.label = labels[String(c.id)];
}

export async function putLabel(id, k, label) {
  const reply = await api(urls.labels(id), { method: "PUT", body: { labels: { [String(k)]: label } } });
  await applyLabels(id, reply?.labels || { [String(k)]: label });
  for (const key of [...cache.keys()]) {
    if (key.startsWith(`${id}:network:${k}:`)) {
      const detail = await cache.get(key).catch(() => null);
      if (detail) detail.label = label;
    }
  }
  return reply;
}
