// Jobs: ListJobs' filters, a page of jobs, and paging with the opaque page token.

import { get, query } from "./api.js";
import { JOB_STATES, badge, h, replace, table, time } from "./ui.js";

const PAGE_SIZES = ["25", "50", "100", "200"];
const pagesBack = []; // page tokens of the pages before this one, for "Previous"

export async function renderJobs(main, signal, params) {
  const filters = readFilters(params);
  const form = filterForm(filters);
  const results = h("div", { "aria-busy": "true" }, h("p", {}, "Loading jobs…"));
  replace(main, h("h1", {}, "Jobs"), findById(), form, results);
  const reply = await get(`/v1/jobs${query(apiParams(filters))}`, { signal });
  results.removeAttribute("aria-busy");
  replace(results, jobTable(reply.jobs), pager(filters, reply.nextPageToken));
}

function readFilters(params) {
  return {
    queue: params.get("queue") || "", kind: params.get("kind") || "", label: params.get("label") || "",
    states: params.getAll("state"), pageSize: params.get("pageSize") || "50", pageToken: params.get("pageToken") || "",
  };
}

function apiParams(filters) {
  const result = { queue: filters.queue, kind: filters.kind, pageSize: filters.pageSize, pageToken: filters.pageToken,
    states: filters.states.map((s) => `JOB_STATE_${s}`) };
  const [key, ...value] = filters.label.split("=");
  if (key && value.length) result[`labels.${key.trim()}`] = value.join("=").trim();
  return result;
}

function hashFor(filters) {
  const search = new URLSearchParams();
  for (const name of ["queue", "kind", "label", "pageSize", "pageToken"]) if (filters[name]) search.set(name, filters[name]);
  for (const state of filters.states) search.append("state", state);
  return `#/jobs?${search}`;
}

function findById() {
  const input = h("input", { id: "find-id", name: "id", class: "mono", size: 38, placeholder: "01a2…", required: true,
    autocomplete: "off", spellcheck: "false" });
  return h("form", { class: "filters", role: "search", onsubmit: (event) => {
    event.preventDefault();
    location.hash = `#/jobs/${encodeURIComponent(input.value.trim())}`;
  } }, h("div", { class: "field" }, h("label", { for: "find-id" }, "Job ID"), input), h("button", { type: "submit" }, "Open job"));
}

function textField(id, label, value, hint) {
  return h("div", { class: "field" }, h("label", { for: id }, label),
    h("input", { id, name: id, value, placeholder: hint, autocomplete: "off" }));
}

function filterForm(filters) {
  const states = h("fieldset", {}, h("legend", {}, "States"),
    JOB_STATES.map((state) => h("label", { class: "check" },
      h("input", { type: "checkbox", name: "state", value: state, checked: filters.states.includes(state) }), state)));
  const size = h("select", { id: "pageSize", name: "pageSize" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: n === filters.pageSize }, n)));
  return h("form", { class: "filters", "aria-label": "Filter jobs", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    pagesBack.length = 0;
    location.hash = hashFor({ queue: data.get("queue").trim(), kind: data.get("kind").trim(),
      label: data.get("label").trim(), states: data.getAll("state"), pageSize: data.get("pageSize"), pageToken: "" });
  } },
  textField("queue", "Queue", filters.queue, "any"), textField("kind", "Kind", filters.kind, "any"),
  textField("label", "Label", filters.label, "key=value"), states,
  h("div", { class: "field" }, h("label", { for: "pageSize" }, "Per page"), size),
  h("button", { type: "submit" }, "Apply filters"));
}

function jobTable(jobs) {
  if (!jobs.length) return h("p", {}, "No job matches these filters.");
  const rows = jobs.map((job) => h("tr", {},
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
    h("td", {}, job.kind), h("td", { class: "hide-narrow" }, job.queue), h("td", {}, badge(job.state)),
    h("td", { class: "hide-narrow" }, h("progress", { max: 100, value: job.progress.percent,
      "aria-label": `progress of ${job.id}` })),
    h("td", { class: "num hide-narrow" }, `${job.attempt}/${job.maxAttempts}`),
    h("td", { class: "hide-narrow" }, time(job.createTime))));
  return table(`${jobs.length} jobs, newest first`,
    [["ID"], ["Kind"], ["Queue", "hide-narrow"], ["State"], ["Progress", "hide-narrow"], ["Attempt", "num hide-narrow"],
      ["Created", "hide-narrow"]], rows);
}

function pager(filters, nextToken) {
  const previous = h("button", { type: "button", class: "quiet", disabled: !filters.pageToken, onclick: () => {
    location.hash = hashFor({ ...filters, pageToken: pagesBack.pop() || "" });
  } }, "Previous page");
  const next = h("button", { type: "button", disabled: !nextToken, onclick: () => {
    pagesBack.push(filters.pageToken);
    location.hash = hashFor({ ...filters, pageToken: nextToken });
  } }, "Next page");
  return h("nav", { class: "pager", "aria-label": "Pages" }, previous, next);
}
