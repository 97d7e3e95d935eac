// Queues: jobs per state, the oldest queued job's age, whether the queue is paused and its limits, with
// Pause and Resume; and jobs finished per minute (a small chart).

import { events, get, post, query } from "./api.js";
import { announce, duration, errorText, h, replace, table } from "./ui.js";

const MINUTES = 15;
const BACKFILL_PAGES = 2; // at most 1,000 finished jobs are read to draw the past minutes
const REFRESH_MS = 5000;
const FINAL = ["EVENT_TYPE_SUCCEEDED", "EVENT_TYPE_FAILED", "EVENT_TYPE_CANCELLED"];
const COLUMNS = ["scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled", "stale"];

export async function renderQueues(main, signal) {
  const list = new QueueList(signal);
  list.queues = await list.load();
  const chartSlot = h("div", {}, h("p", { class: "muted" }, "Reading finished jobs…"));
  replace(main, h("h1", {}, "Queues"), list.message, list.slot,
    h("h2", {}, `Jobs finished per minute, last ${MINUTES} minutes`), chartSlot);
  list.draw();
  const timer = window.setInterval(() => list.refresh(), REFRESH_MS);
  signal.addEventListener("abort", () => window.clearInterval(timer));
  const counts = new Map(); // minute (epoch ms) -> jobs finished
  const capped = await backfill(counts, signal);
  drawChart(chartSlot, counts, capped);
  follow(counts, () => drawChart(chartSlot, counts, capped), signal);
}

/** Every queue with settings or jobs (ListQueues: a paused queue stays listed when it holds no job). */
class QueueList {
  constructor(signal) {
    this.signal = signal;
    this.queues = [];
    this.changes = 0; // a refresh that started before the last Pause or Resume answered is not drawn
    this.slot = h("div", {});
    this.message = h("p", { role: "alert", class: "error" });
  }

  async load() {
    const queues = [];
    let pageToken = "";
    do { // queues are few: read them all
      const reply = await get(`/v1/queues${query({ pageSize: 1000, pageToken })}`, { signal: this.signal });
      queues.push(...reply.queues);
      pageToken = reply.nextPageToken;
    } while (pageToken);
    return queues;
  }

  async refresh() {
    const changes = this.changes;
    let queues;
    try { queues = await this.load(); } catch { return; } // next tick
    if (changes !== this.changes || this.signal.aborted) return;
    this.queues = queues;
    this.draw();
  }

  async act(queue, verb) {
    this.message.textContent = "";
    try {
      const reply = await post(`/v1/queues/${encodeURIComponent(queue.name)}:${verb}`, {}, { signal: this.signal });
      this.changes++;
      this.queues = this.queues.map((q) => (q.name === reply.name ? reply : q));
      announce(`Queue ${reply.name} ${reply.settings.paused ? "paused" : "resumed"}`);
      this.draw();
    } catch (error) {
      if (!this.signal.aborted) this.message.textContent = errorText(error);
    }
  }

  draw() {
    if (!this.queues.length) {
      replace(this.slot, h("p", {}, "No jobs yet. Enqueue one with ", h("code", {}, "POST /v1/jobs"),
        " or the jobwire command."));
      return;
    }
    // The table is drawn anew on each refresh: a keyboard user's focus goes back to the same queue's button.
    const focused = this.slot.contains(document.activeElement) ? document.activeElement.dataset.queue : undefined;
    const rows = this.queues.map((q) => {
      const paused = q.settings.paused;
      return h("tr", {},
        h("th", { scope: "row" }, h("a", { href: `#/jobs?${new URLSearchParams({ queue: q.name })}` }, q.name)),
        COLUMNS.map((c) => h("td", { class: "num" }, q.stats[c] || "0")),
        h("td", { class: "num" }, duration(q.stats.oldestQueuedAge)),
        h("td", {}, h("span", { class: "line" }, h("span", { class: `badge s-${paused ? "PAUSED" : "ACTIVE"}` },
          paused ? "paused" : "active")), limits(q.settings)),
        h("td", {}, h("button", { type: "button", class: "quiet", "data-queue": q.name,
          "aria-label": `${paused ? "Resume" : "Pause"} queue ${q.name}`,
          onclick: () => this.act(q, paused ? "resume" : "pause") }, paused ? "Resume" : "Pause")));
    });
    replace(this.slot, table("Jobs per state in each queue, and its controls (refreshed every 5 s)",
      [["Queue"], ...COLUMNS.map((c) => [c[0].toUpperCase() + c.slice(1), "num"]), ["Oldest queued", "num"],
        ["State and limits"], ["Actions"]], rows));
    if (focused !== undefined) {
      for (const button of this.slot.querySelectorAll("button[data-queue]")) {
        if (button.dataset.queue === focused) button.focus();
      }
    }
  }
}

/** The queue's stored limits, one a line. */
function limits(settings) {
  const parts = [];
  if (settings.concurrencyLimit) parts.push(`concurrency ${settings.concurrencyLimit}`);
  if (settings.rateLimit) parts.push(`rate ${settings.rateLimit}/s, burst ${settings.rateBurst}`);
  if (settings.keyLimit) parts.push(`key limit ${settings.keyLimit}`);
  return parts.map((text) => h("span", { class: "line" }, text));
}

const minuteOf = (ms) => Math.floor(ms / 60000) * 60000;

async function backfill(counts, signal) {
  const since = new Date(Date.now() - MINUTES * 60000).toISOString();
  let pageToken = "";
  for (let page = 0; page < BACKFILL_PAGES; page++) {
    const params = { finishedAfter: since, pageSize: 500, pageToken,
      states: ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"] };
    const reply = await get(`/v1/jobs${query(params)}`, { signal });
    for (const job of reply.jobs) add(counts, Date.parse(job.finishTime));
    pageToken = reply.nextPageToken;
    if (!pageToken) return false;
  }
  return true;
}

function add(counts, ms) {
  const minute = minuteOf(ms);
  counts.set(minute, (counts.get(minute) || 0) + 1);
}

async function follow(counts, redraw, signal) {
  try {
    for await (const message of events(`/v1/events${query({ type: FINAL })}`, { signal })) {
      if (message.event !== "message") break;
      add(counts, Date.parse(message.data.time));
      redraw();
    }
  } catch { /* the page was left, or the stream ended: the chart stays as drawn */ }
}

function drawChart(slot, counts, capped) {
  const now = minuteOf(Date.now());
  const minutes = Array.from({ length: MINUTES }, (_, i) => now - (MINUTES - 1 - i) * 60000);
  const values = minutes.map((m) => counts.get(m) || 0);
  const top = Math.max(1, ...values);
  const width = 360, height = 90, bar = width / MINUTES;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 14}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const total = values.reduce((a, b) => a + b, 0);
  svg.setAttribute("aria-label", `${total}${capped ? " or more" : ""} jobs finished in the last ${MINUTES} minutes; `
    + `${values[values.length - 1]} this minute`);
  values.forEach((value, i) => {
    const rect = document.createElementNS(svg.namespaceURI, "rect");
    const tall = Math.round((value / top) * height);
    rect.setAttribute("x", String(i * bar + 1));
    rect.setAttribute("y", String(height - tall));
    rect.setAttribute("width", String(bar - 2));
    rect.setAttribute("height", String(tall));
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `${new Date(minutes[i]).toLocaleTimeString()}: ${value}`;
    rect.append(title);
    svg.append(rect);
  });
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", "0");
  label.setAttribute("y", String(height + 12));
  label.textContent = `peak ${top}/min`;
  svg.append(label);
  replace(slot, svg, capped ? h("p", { class: "muted" }, "More than 1,000 jobs finished: older minutes show at least that many.") : null);
}
