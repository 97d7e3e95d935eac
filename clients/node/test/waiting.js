// Waiting in tests without fixed sleeps: on promises with a deadline, and on a job's own events.

/** `promise`, or a rejection naming `what` after `ms` milliseconds. */
export function within(ms, promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** A promise with its resolve function. */
export function deferred() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

/**
 * Every event of a job from its snapshot until its terminal one (a job already finished gives its
 * snapshot alone): the last event's `job` is the job as it ended. `onSnapshot` is called once the
 * snapshot is in: what happens to the job from then on is in the events; `onEvent` with each event.
 */
export async function eventsOf(client, id, onSnapshot = () => {}, onEvent = () => {}) {
  const events = [];
  for await (const ev of client.watch(id)) {
    events.push(ev);
    if (events.length === 1) onSnapshot(ev);
    onEvent(ev);
  }
  return events;
}

/** The job's state after its last event. */
export const finalState = (events) => events.at(-1).job?.state;

/** `SNAPSHOT PROGRESS(fetch) …`, for assertion messages. */
export const summary = (events) => events
  .map((e) => `${e.type.replace('EVENT_TYPE_', '')}${e.phase ? `(${e.phase})` : ''}`).join(' ');
