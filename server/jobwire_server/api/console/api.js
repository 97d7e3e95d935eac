// The gateway's JSON API and its Server-Sent Events, with the bearer token kept in session storage.

const TOKEN_KEY = "jobwire.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  if (token()) result.Authorization = `Bearer ${token()}`;
  return result;
}

/** An error answer of the API: the google.rpc.Status, with its ErrorInfo reason and field violations. */
export class ApiError extends Error {
  constructor(httpStatus, status) {
    super(status.message || `HTTP ${httpStatus}`);
    this.httpStatus = httpStatus;
    this.code = status.code;
    this.reason = "";
    this.violations = [];
    for (const detail of status.details || []) {
      if (detail["@type"].endsWith("google.rpc.ErrorInfo")) this.reason = detail.reason;
      if (detail["@type"].endsWith("google.rpc.BadRequest")) this.violations = detail.fieldViolations;
    }
  }
}

async function failure(response) {
  let status = { message: `HTTP ${response.status}` };
  try { status = await response.json(); } catch { /* not JSON: keep the HTTP status */ }
  const error = new ApiError(response.status, status);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("jobwire:unauthenticated"));
  return error;
}

/** Query string from an object; arrays repeat their key. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(key, item);
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export async function call(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body = {}, options) => call("POST", path, body, options);

/**
 * The events of one Server-Sent Events stream, read with fetch (EventSource cannot send a token).
 * Yields {id, event, data}; returns at the end of the stream (a 204 answer is an empty stream).
 */
export async function* events(path, { lastEventId = "", signal } = {}) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = lastEventId;
  const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
  if (response.status === 204) return;
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseBlock(block);
      if (parsed) yield parsed;
    }
  }
}

function parseBlock(block) {
  const message = { id: "", event: "message", data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a heartbeat
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") data.push(value);
    else if (name === "id") message.id = value;
    else if (name === "event") message.event = value;
  }
  if (!data.length) return null;
  message.data = JSON.parse(data.join("\n"));
  return message;
}
