// Small DOM helpers: elements are built with textContent, never from HTML strings.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** "JOB_STATE_QUEUED" -> "QUEUED" (and the same for phase, event and delivery enums). */
export function short(name) {
  return String(name || "").replace(/^(JOB_STATE|PHASE_STATE|EVENT_TYPE|WEBHOOK_DELIVERY_STATE)_/, "");
}

export function badge(state) {
  const name = short(state);
  return h("span", { class: `badge s-${name}` }, name);
}

export function time(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return h("time", { datetime: iso, title: iso }, date.toLocaleString());
}

/** A proto3 JSON Duration ("12.5s") as a short human text. */
export function duration(text) {
  const seconds = parseFloat(text || "0");
  if (seconds < 1) return "0 s";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** Base64 bytes as text when they are UTF-8, else their size. */
export function bytesText(base64) {
  if (!base64) return "";
  const raw = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    return `(${raw.length} bytes of binary data)`;
  }
}

export function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  window.setTimeout(() => { region.textContent = text; }, 50); // a change the screen reader notices
}

export function errorText(error) {
  const fields = (error.violations || []).map((v) => `${v.field}: ${v.description}`);
  return fields.length ? `${error.message} (${fields.join("; ")})` : error.message;
}

export function table(caption, headings, rows) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headings.map(([text, cls]) => h("th", { scope: "col", class: cls }, text)))),
      h("tbody", {}, rows)));
}

export const TERMINAL = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_STALE"]);
export const JOB_STATES = ["SCHEDULED", "QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "FAILED", "CANCELLED", "STALE"];
