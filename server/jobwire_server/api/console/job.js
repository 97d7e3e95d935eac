// One job: its phases with live progress bars, result, errors, event timeline and webhook deliveries,
// with cancel and retry. The page follows the job's event stream (replayed from the start), resuming
// after the last event it saw when the connection drops or the server ends a slow stream.

import { ApiError, events, get, post } from "./api.js";
import { TERMINAL, announce, badge, bytesText, errorText, h, replace, short, table, time } from "./ui.js";

const ACTIVE = new Set(["JOB_STATE_SCHEDULED", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_RETRYING"]);
const RECONNECT_MS = 1000;
const WAITING_MS = 5000; // how often a QUEUED job's waiting reason is read again
// GetJob's waitingReason: what holds a QUEUED job back (only GetJob says; events and other replies do not).
const WAITING = {
  WAITING_REASON_NONE: "for a free worker slot",
  WAITING_REASON_QUEUE_PAUSED: "its queue is paused",
  WAITING_REASON_QUEUE_CONCURRENCY: "its queue's concurrency limit is reached",
  WAITING_REASON_CONCURRENCY_KEY: "its queue's limit of running jobs with its concurrency key is reached",
  WAITING_REASON_RATE_LIMIT: "its queue's rate limit: it starts when the next token accrues",
};

export async function renderJob(main, signal, id) {
  const page = new JobPage(main, signal, await get(`/v1/jobs/${encodeURIComponent(id)}`, { signal }));
  page.draw();
  page.loadDeliveries();
  page.follow();
  page.watchWaiting();
}

class JobPage {
  constructor(main, signal, job) {
    this.main = main;
    this.signal = signal;
    this.job = job;
    this.waiting = job.waitingReason || ""; // from the last GetJob: the job in an event has none
    this.lastSequence = "1"; // replay everything after ENQUEUED (sequence 1), shown from the job itself
    this.following = false;
    this.slots = { head: h("div", {}), phases: h("div", {}), outcome: h("div", {}), deliveries: h("div", {}) };
    this.timeline = h("ol", { class: "timeline", "aria-label": "Events, oldest first" },
      h("li", {}, time(job.createTime), badge("ENQUEUED")));
    this.message = h("p", { role: "alert", class: "error" });
    replace(main, h("h1", {}, "Job ", h("span", { class: "mono" }, job.id)), this.slots.head, this.actions(), this.message,
      h("h2", {}, "Phases"), this.slots.phases, this.slots.outcome, h("h2", {}, "Events"), this.timeline,
      h("h2", {}, "Webhook deliveries"), this.slots.deliveries);
  }

  draw() {
    const job = this.job;
    replace(this.slots.head,
      h("dl", { class: "facts" },
        h("dt", {}, "State"), h("dd", { id: "job-state" }, badge(job.state),
          job.cancelRequested ? h("span", { class: "muted" }, ` cancel requested: ${job.cancelReason}`) : null),
        job.state === "JOB_STATE_QUEUED" && WAITING[this.waiting]
          ? [h("dt", {}, "Waiting"), h("dd", { id: "job-waiting" }, WAITING[this.waiting], " ",
            h("span", { class: "muted mono" }, this.waiting.replace(/^WAITING_REASON_/, "")))] : null,
        h("dt", {}, "Kind"), h("dd", {}, job.kind), h("dt", {}, "Queue"), h("dd", {}, job.queue),
        h("dt", {}, "Attempt"), h("dd", {}, `${job.attempt} of ${job.maxAttempts}`),
        h("dt", {}, "Priority"), h("dd", {}, String(job.priority)),
        h("dt", {}, "Created"), h("dd", {}, time(job.createTime)),
        h("dt", {}, "Finished"), h("dd", {}, time(job.finishTime)),
        Object.keys(job.labels).length ? [h("dt", {}, "Labels"),
          h("dd", {}, Object.entries(job.labels).map(([k, v]) => `${k}=${v}`).join(", "))] : null));
    // The buttons stay the same elements (a keyboard user's focus stays on them); only their state changes.
    this.buttons.cancel.disabled = !ACTIVE.has(job.state) || job.cancelRequested;
    this.buttons.retry.disabled = !TERMINAL.has(job.state) || job.state === "JOB_STATE_STALE";
    this.drawPhases();
    this.drawOutcome();
  }

  actions() {
    const fromStart = h("input", { type: "checkbox", id: "from-start" });
    this.buttons = {
      cancel: h("button", { type: "button", class: "danger", onclick: () => this.act("cancel", {}) }, "Cancel job"),
      retry: h("button", { type: "button", onclick: () => this.act("retry", { fromStart: fromStart.checked }) },
        "Retry job"),
    };
    return h("div", { class: "actions" }, this.buttons.cancel, this.buttons.retry,
      h("label", { class: "check" }, fromStart, "from the first phase"));
  }

  async act(verb, body) {
    this.message.textContent = "";
    try {
      const job = await post(`/v1/jobs/${this.job.id}:${verb}`, body, { signal: this.signal });
      announce(`Job ${verb === "cancel" ? "cancel requested" : "retried"}: ${short(job.state)}`);
      this.adopt(job);
      if (!this.following) this.follow();
    } catch (error) {
      if (!this.signal.aborted) this.message.textContent = errorText(error);
    }
  }

  /** Show `job` unless the page already shows a later state: an action's reply can arrive after the
   * stream has brought the events that followed it (a cancel's reply after the CANCELLED event). */
  adopt(job) {
    if (Number(job.lastSequence) < Number(this.job.lastSequence)) return;
    if (job.state !== "JOB_STATE_QUEUED") this.waiting = "";
    else if (WAITING[job.waitingReason]) this.waiting = job.waitingReason;
    this.job = job;
    this.draw();
  }

  /** While the job is QUEUED, read it again every few seconds for its waiting reason. */
  watchWaiting() {
    const timer = window.setInterval(async () => {
      if (this.job.state !== "JOB_STATE_QUEUED") return;
      try {
        const job = await get(`/v1/jobs/${encodeURIComponent(this.job.id)}`, { signal: this.signal });
        this.adopt(job);
      } catch { /* next tick */ }
    }, WAITING_MS);
    this.signal.addEventListener("abort", () => window.clearInterval(timer));
  }

  drawPhases() {
    const items = this.job.phases.map((phase) => h("li", { class: "phase" },
      h("div", { class: "phase-head" }, h("strong", {}, phase.name), badge(phase.state)),
      h("progress", { max: 100, value: phase.progress.percent, "aria-label": `${phase.name} progress`,
        "data-phase": phase.name }),
      h("div", { class: "muted" }, `${Math.round(phase.progress.percent)} %`,
        phase.progress.message ? ` · ${phase.progress.message}` : ""),
      phase.result ? h("pre", { "aria-label": `${phase.name} result` }, bytesText(phase.result)) : null,
      phase.error ? h("p", { class: "error" }, phase.error.message) : null));
    replace(this.slots.phases, h("ol", { class: "phases" }, items));
  }

  drawOutcome() {
    const job = this.job;
    const parts = [];
    if (job.result) parts.push(h("h2", {}, "Result"), h("pre", { id: "job-result" }, bytesText(job.result)));
    if (job.errorHistory.length) {
      parts.push(h("h2", {}, "Errors"), table("Every failure and interruption, oldest first",
        [["Time"], ["Attempt", "num"], ["Phase"], ["Type"], ["Message"]],
        job.errorHistory.map((e) => h("tr", {}, h("td", {}, time(e.time)), h("td", { class: "num" }, String(e.attempt)),
          h("td", {}, e.phase), h("td", {}, e.type + (e.interrupted ? " (interrupted)" : "")), h("td", {}, e.message)))));
    }
    replace(this.slots.outcome, parts);
  }

  async loadDeliveries() {
    try {
      const reply = await get(`/v1/jobs/${this.job.id}/webhookDeliveries`, { signal: this.signal });
      replace(this.slots.deliveries, reply.deliveries.length ? table("One delivery per event sent",
        [["Event"], ["State"], ["Attempts", "num"], ["URL"], ["Last error"]],
        reply.deliveries.map((d) => h("tr", {}, h("td", {}, short(d.eventType)), h("td", {}, badge(d.state)),
          h("td", { class: "num" }, String(d.attempts)), h("td", {}, d.url), h("td", {}, d.lastError))))
        : h("p", { class: "muted" }, this.job.webhook ? "None yet." : "This job has no webhook."));
    } catch (error) {
      if (!this.signal.aborted) replace(this.slots.deliveries, h("p", { class: "error" }, errorText(error)));
    }
  }

  /** Follow the event stream until the job's terminal event, reconnecting after the last event seen. */
  async follow() {
    this.following = true;
    try {
      while (!this.signal.aborted) {
        const ended = await this.readStream();
        if (ended) break;
        await new Promise((resolve) => { window.setTimeout(resolve, RECONNECT_MS); });
      }
    } finally {
      this.following = false;
    }
    if (!this.signal.aborted) this.loadDeliveries();
  }

  /** True when the stream ended for good (the job finished); false to reconnect. */
  async readStream() {
    try {
      for await (const message of events(`/v1/jobs/${this.job.id}/events`,
        { lastEventId: this.lastSequence, signal: this.signal })) {
        if (message.event === "end") return true;
        if (message.event === "status") return false; // e.g. WATCH_TOO_SLOW: resume after the last event
        this.apply(message);
      }
      return true; // 204: nothing after the last event, the job had finished
    } catch (error) {
      if (this.signal.aborted) return true;
      if (error instanceof ApiError && error.httpStatus < 500 && error.httpStatus !== 429) {
        this.message.textContent = errorText(error);
        return true;
      }
      return false;
    }
  }

  apply(message) {
    const event = message.data;
    this.lastSequence = message.id || this.lastSequence;
    if (event.job) this.adopt(event.job);
    if (event.type === "EVENT_TYPE_PROGRESS") return; // the bars show it; the timeline keeps the rest
    const list = this.timeline;
    const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4; // keep following the newest
    list.append(h("li", {}, time(event.time), badge(event.type), event.phase ? h("span", {}, event.phase) : null,
      event.detail ? h("span", { class: "muted" }, event.detail) : null));
    if (atEnd) list.scrollTop = list.scrollHeight;
    if (TERMINAL.has(this.job.state)) announce(`Job ${short(this.job.state)}`);
  }
}
