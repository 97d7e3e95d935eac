// Queues: jobs per state, the oldest queued job's age, and jobs finished per minute (a small chart).

import { events, get, query } from "./api.js";
import { duration, h, replace, table } from "./ui.js";

const MINUTES = 15;
const BACKFILL_PAGES = 2; // at most 1,000 finished jobs are read to draw the past minutes
const REFRESH_MS = 5000;
const FINAL = ["EVENT_TYPE_SUCCEEDED", "EVENT_TYPE_FAILED", "EVENT_TYPE_CANCELLED"];
const COLUMNS = ["scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled", "stale"];

export async function renderQueues(main, signal) {
  const stats = await get("/v1/queues/stats", { signal });
  const tableSlot = h("div", {});
  const chartSlot = h("div", {}, h("p", { class: "muted" }, "Reading finished jobs…"));
  replace(main, h("h1", {}, "Queues"), tableSlot, h("h2", {}, `Jobs finished per minute, last ${MINUTES} minutes`), chartSlot);
  drawTable(tableSlot, stats.queues);
  const timer = window.setInterval(async () => {
    try { drawTable(tableSlot, (await get("/v1/queues/stats", { signal })).queues); } catch { /* next tick */ }
  }, REFRESH_MS);
  signal.addEventListener("abort", () => window.clearInterval(timer));
  const counts = new Map(); // minute (epoch ms) -> jobs finished
  const capped = await backfill(counts, signal);
  drawChart(chartSlot, counts, capped);
  follow(counts, () => drawChart(chartSlot, counts, capped), signal);
}

function drawTable(slot, queues) {
  if (!queues.length) {
    replace(slot, h("p", {}, "No jobs yet. Enqueue one with ", h("code", {}, "POST /v1/jobs"), " or the jobwire command."));
    return;
  }
  const rows = queues.map((q) => h("tr", {},
    h("th", { scope: "row" }, h("a", { href: `#/jobs?${new URLSearchParams({ queue: q.queue })}` }, q.queue)),
    COLUMNS.map((c) => h("td", { class: "num" }, q[c] || "0")),
    h("td", { class: "num" }, duration(q.oldestQueuedAge))));
  replace(slot, table("Jobs per state in each queue (refreshed every 5 s)",
    [["Queue"], ...COLUMNS.map((c) => [c[0].toUpperCase() + c.slice(1), "num"]), ["Oldest queued", "num"]], rows));
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
