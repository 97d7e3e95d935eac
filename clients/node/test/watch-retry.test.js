// watch() resumes a stream the server refuses or drops, against a live server that takes at most two
// watch streams (`--max-watch-streams 2`): a watch refused with RESOURCE_EXHAUSTED / TOO_MANY_STREAMS
// is retried with backoff until a slot frees, and a watch cut by a server restart (UNAVAILABLE) is
// resumed after the last sequence it received, with no event lost or repeated.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { JobwireClient, JobwireError } from '../src/index.js';
import { startServer } from './live-server.js';

const FLAGS = ['--max-watch-streams', '2', '--shutdown-grace', '0.2'];
const FAST_RECONNECT = { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 500 };
const FINISHED = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_STALE']);

/** `promise`, or a rejection naming `what` after `ms` milliseconds. */
function within(ms, promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function collect(stream) {
  const events = [];
  for await (const ev of stream) events.push(ev);
  return events;
}

const summary = (events) => events.map((e) => `${e.sequence}:${e.type.replace('EVENT_TYPE_', '')}`).join(' ');

describe('watch() retries what the server refuses or drops', { timeout: 120_000 }, () => {
  let dir;
  let server;
  let client;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobwire-node-watch-'));
    server = await startServer({ flags: FLAGS, dir });
    client = new JobwireClient(server.target, { timeoutMs: 15_000, channelOptions: FAST_RECONNECT });
  });

  after(async () => {
    client?.close();
    await server?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a watch refused with TOO_MANY_STREAMS is retried with backoff until a slot frees', async () => {
    // Two streams on a job that waits an hour take both slots; each has its snapshot, so it is admitted.
    const { job: waiting } = await client.enqueue('sleep', { payload: { seconds: 0 }, delaySeconds: 3600 });
    const holders = [0, 1].map(() => client.watch(waiting.id, { retry: { maxAttempts: 1 } }));
    for (const holder of holders) {
      const first = await within(10_000, holder.next(), 'a holder\'s snapshot');
      assert.equal(first.value.type, 'EVENT_TYPE_SNAPSHOT');
    }

    const { job } = await client.enqueue('sleep', { payload: { seconds: 0.1, phases: 2 } });
    const retries = [];
    let refused;
    const firstRefusal = new Promise((resolve) => { refused = resolve; });
    const watching = collect(client.watch(job.id, {
      retry: { maxAttempts: 50, initialBackoffMs: 20, maxBackoffMs: 200 },
      onRetry: (error, attempt, delayMs) => {
        retries.push({ error, attempt, delayMs });
        refused();
      },
    }));
    await within(10_000, firstRefusal, 'the first refusal');
    holders[0].cancel(); // frees a slot: a later try is admitted

    const events = await within(30_000, watching, 'the retried watch');
    holders[1].cancel();

    const { error, attempt, delayMs } = retries[0];
    assert.ok(error instanceof JobwireError);
    assert.equal(error.codeName, 'RESOURCE_EXHAUSTED');
    assert.equal(error.reason, 'TOO_MANY_STREAMS');
    assert.equal(attempt, 1);
    assert.ok(delayMs >= 10 && delayMs <= 20, `first backoff ${delayMs} ms, expected 10–20`);
    assert.ok(retries.every((r) => r.error.reason === 'TOO_MANY_STREAMS'), retries.map((r) => r.error.message).join('; '));
    assert.ok(retries.every((r, i) => r.attempt === i + 1), 'tries counted in a row');
    assert.equal(events[0].type, 'EVENT_TYPE_SNAPSHOT', summary(events));
    assert.ok(FINISHED.has(events.at(-1).job.state), summary(events));
    assert.equal((await client.get(job.id)).state, 'JOB_STATE_SUCCEEDED');
  });

  test('a refused watch gives up after retry.maxAttempts tries in a row', async () => {
    const { job: waiting } = await client.enqueue('sleep', { payload: { seconds: 0 }, delaySeconds: 3600 });
    const holders = [0, 1].map(() => client.watch(waiting.id));
    for (const holder of holders) assert.equal((await within(10_000, holder.next(), 'a snapshot')).value.type, 'EVENT_TYPE_SNAPSHOT');
    const tries = [];
    const refused = collect(client.watch(waiting.id, {
      retry: { maxAttempts: 3, initialBackoffMs: 5, maxBackoffMs: 5 },
      onRetry: (_error, attempt) => tries.push(attempt),
    }));
    await assert.rejects(within(10_000, refused, 'the refused watch'), (err) => {
      assert.equal(err.reason, 'TOO_MANY_STREAMS');
      return true;
    });
    holders.forEach((holder) => holder.cancel());
    assert.deepEqual(tries, [1, 2]);
  });

  test('a watch cut by a server restart resumes after the last sequence, losing and repeating nothing', async () => {
    const { job } = await client.enqueue('sleep', { payload: { seconds: 0.5, phases: 6 } });
    const events = [];
    const retries = [];
    let phaseDone;
    const onePhaseDone = new Promise((resolve) => { phaseDone = resolve; });
    const stream = client.watch(job.id, {
      retry: { maxAttempts: 200, initialBackoffMs: 50, maxBackoffMs: 250 },
      onRetry: (error) => retries.push(error),
    });
    const watching = (async () => {
      for await (const ev of stream) {
        events.push(ev);
        if (ev.type === 'EVENT_TYPE_PHASE_SUCCEEDED') phaseDone();
      }
    })();
    await within(20_000, onePhaseDone, 'the first phase');

    // SIGTERM: the server drains (the job goes back to the queue, the stream ends UNAVAILABLE); then
    // the same database and address again.
    const retriesBeforeCut = retries.length; // a TOO_MANY_STREAMS while the last test's streams closed
    const { code } = await server.stop();
    assert.equal(code, 0);
    const beforeCut = events.length;
    const lastBeforeCut = BigInt(events.at(-1).sequence);
    server = await startServer({ flags: FLAGS, dir, target: server.target });
    await within(60_000, watching, 'the resumed watch');

    const afterCut = retries.slice(retriesBeforeCut);
    assert.ok(afterCut.length >= 1, 'the watch was tried again');
    assert.ok(afterCut.every((e) => e.codeName === 'UNAVAILABLE'), afterCut.map((e) => e.message).join('; '));
    assert.equal(events[0].type, 'EVENT_TYPE_SNAPSHOT', summary(events));
    assert.ok(events.length > beforeCut, `nothing after the restart: ${summary(events)}`);
    assert.ok(BigInt(events[beforeCut].sequence) === lastBeforeCut + 1n, `gap or repeat at the cut: ${summary(events)}`);
    for (let i = 2; i < events.length; i += 1) {
      assert.equal(BigInt(events[i].sequence), BigInt(events[i - 1].sequence) + 1n, summary(events));
    }
    assert.equal(events.at(-1).type, 'EVENT_TYPE_SUCCEEDED', summary(events));
    assert.ok(events.some((e) => e.type === 'EVENT_TYPE_INTERRUPTED'), `the drain interrupted the job: ${summary(events)}`);

    // What the watch received after its snapshot is exactly what the server stored.
    const stored = await collect(client.watch(job.id, { afterSequence: events[0].sequence }));
    assert.deepEqual(events.slice(1).map((e) => [e.sequence, e.type, e.phase]), stored.map((e) => [e.sequence, e.type, e.phase]));
  });
});
