// Schedules: when each fires next, paused or not, with pause, resume and fire-now.

import { get, post, query } from "./api.js";
import { announce, errorText, h, replace, table, time } from "./ui.js";

export async function renderSchedules(main, signal) {
  const message = h("p", { role: "alert", class: "error" });
  const slot = h("div", {});
  replace(main, h("h1", {}, "Schedules"), message, slot);
  const schedules = [];
  let pageToken = "";
  do { // schedules are few: read them all
    const reply = await get(`/v1/schedules${query({ pageSize: 500, pageToken })}`, { signal });
    schedules.push(...reply.schedules);
    pageToken = reply.nextPageToken;
  } while (pageToken);
  draw(slot, schedules, message, signal);
}

function draw(slot, schedules, message, signal) {
  if (!schedules.length) {
    replace(slot, h("p", {}, "No schedules. Create one with ", h("code", {}, "POST /v1/schedules"),
      " or in the config file."));
    return;
  }
  const act = async (schedule, verb, body) => {
    message.textContent = "";
    try {
      const reply = await post(`/v1/schedules/${encodeURIComponent(schedule.id)}:${verb}`, body, { signal });
      if (verb === "trigger") announce(reply.skipped ? "Skipped: the previous job is still running" : "Fired");
      else {
        schedules[schedules.indexOf(schedule)] = reply;
        announce(`Schedule ${schedule.id} ${verb}d`);
      }
      draw(slot, schedules, message, signal);
    } catch (error) {
      message.textContent = errorText(error);
    }
  };
  const rows = schedules.map((s) => h("tr", {},
    h("th", { scope: "row", class: "mono" }, s.id),
    h("td", {}, s.spec.cron ? `cron ${s.spec.cron}${s.spec.timeZone ? ` (${s.spec.timeZone})` : ""}` : `every ${s.spec.interval}`),
    h("td", {}, s.spec.template.kind), h("td", {}, s.paused ? "paused" : "active"),
    h("td", {}, time(s.nextFireTimes[0])),
    h("td", {}, s.lastJobId ? h("a", { href: `#/jobs/${s.lastJobId}`, class: "mono" }, "last job") : "—"),
    h("td", {}, h("div", { class: "actions" },
      h("button", { type: "button", class: "quiet", onclick: () => act(s, s.paused ? "resume" : "pause", {}),
        "aria-label": `${s.paused ? "Resume" : "Pause"} ${s.id}` }, s.paused ? "Resume" : "Pause"),
      h("button", { type: "button", onclick: () => act(s, "trigger", {}), "aria-label": `Fire ${s.id} now` }, "Fire now")))));
  replace(slot, table(`${schedules.length} schedules`,
    [["ID"], ["When"], ["Kind"], ["State"], ["Next"], ["Last job"], ["Actions"]], rows));
}
