// The console: a hash router over four views, and the token dialog.

import { setToken, token } from "./api.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { renderQueues } from "./queues.js";
import { renderSchedules } from "./schedules.js";
import { errorText, h, replace } from "./ui.js";

const view = () => document.getElementById("view");
let current = null; // the AbortController of the view on screen: streams and timers stop with it

function route() {
  const [path, search] = (location.hash.slice(1) || "/queues").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { section: "jobs", render: (m, s) => renderJob(m, s, decodeURIComponent(parts[1])) };
  if (parts[0] === "jobs") return { section: "jobs", render: (m, s) => renderJobs(m, s, params) };
  if (parts[0] === "schedules") return { section: "schedules", render: renderSchedules };
  return { section: "queues", render: renderQueues };
}

async function show() {
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  const { section, render } = route();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = view();
  try {
    await render(main, signal);
  } catch (error) {
    if (signal.aborted || error.name === "AbortError") return;
    replace(main, h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, errorText(error)));
  }
  if (!signal.aborted && document.activeElement === document.body) main.focus();
}

function askForToken() {
  const dialog = document.getElementById("token-dialog");
  if (dialog.open) return;
  document.getElementById("token-input").value = token();
  dialog.showModal();
}

function setUp() {
  const dialog = document.getElementById("token-dialog");
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") setToken(document.getElementById("token-input").value.trim());
    if (dialog.returnValue === "clear") setToken("");
    if (dialog.returnValue) show();
  });
  document.getElementById("token-button").addEventListener("click", askForToken);
  window.addEventListener("jobwire:unauthenticated", askForToken);
  window.addEventListener("hashchange", () => { show().then(() => view().focus()); });
  show();
}

setUp();
