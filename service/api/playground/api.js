// The public API from the page: JSON calls with the API key, and the job's event stream read with
// fetch() (EventSource cannot send an Authorization header).

const KEY = "fresco.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

/** An error answer: `status`, the contract's `code` and `fields` ([{field, message}]). */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.fields = error.fields || [];
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

let onUnauthorized = () => {};
/** Called with the ApiError whenever a call answers 401 (the page then asks for a key). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

/** One JSON call: the parsed body, or an ApiError. */
export async function call(method, path, { body, headers: extra = {}, signal } = {}) {
  const init = { method, headers: headers(extra), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const getModels = () => call("GET", "/models");
export const getJob = (id) => call("GET", `/jobs/${encodeURIComponent(id)}`);
export const cancelJob = (id) => call("DELETE", `/jobs/${encodeURIComponent(id)}`);
/** A fresh Idempotency-Key. (crypto.randomUUID exists only in secure contexts: not on plain http to a LAN host.) */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** POST /generate with an Idempotency-Key (a fresh one unless given). */
export const submit = (body, idempotencyKey = newKey()) =>
  call("POST", "/generate", { body, headers: { "Idempotency-Key": idempotencyKey } });

/** POST /train (a training job), with an Idempotency-Key as for /generate. */
export const train = (body, idempotencyKey = newKey()) =>
  call("POST", "/train", { body, headers: { "Idempotency-Key": idempotencyKey } });

/** GET /adapters: the adapters this API key trained. */
export const getAdapters = () => call("GET", "/adapters");

/**
 * The job's Server-Sent Events, as {event, data} with data parsed from JSON, until the stream ends.
 * Comments (keep-alives) are skipped; `signal` aborts.
 */
export async function* jobEvents(id, signal) {
  const response = await fetch(`/jobs/${encodeURIComponent(id)}/events?previews=true`, {
    headers: headers({ Accept: "text/event-stream" }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = parseEvent(block);
      if (message) yield message;
    }
  }
}

/** One SSE block's `event:` and `data:` lines (data lines joined by newlines, then parsed as JSON). */
export function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
