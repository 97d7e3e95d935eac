// End-to-end test of the Node.js client against the real jobwire server.
//
// Starts a real server (live-server.js: a free loopback port, a fresh database, ready when its health
// check answers), runs a job to completion while watching it, exercises get/cancel/retry and the
// error model, then stops the server with SIGTERM and waits for it to exit.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { JobwireClient, JobwireError } from '../src/index.js';
import { startServer } from './live-server.js';

const READY_DEADLINE_MS = 20_000;

/** Collects every event of a watch until the server ends the stream. */
async function collect(stream) {
  const events = [];
  for await (const ev of stream) events.push(ev);
  return events;
}

async function expectJobwireError(promise, codeName, reason) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof JobwireError, `expected a JobwireError, got ${err}`);
    assert.ok(err instanceof Error);
    assert.equal(err.codeName, codeName, `codeName of ${err.message}`);
    assert.equal(typeof err.code, 'number');
    assert.equal(typeof err.details, 'string');
    assert.equal(err.reason, reason, `reason of ${err.message}`);
    return true;
  });
}

describe('JobwireClient against a live jobwire server', { timeout: 120_000 }, () => {
  let server;
  let client;

  before(async () => {
    server = await startServer({ readyMs: READY_DEADLINE_MS });
    client = new JobwireClient(server.target, { timeoutMs: 15_000 });
  });

  after(async () => {
    client?.close();
    if (server) {
      const { code, signal } = await server.stop();
      if (code !== 0 && signal !== 'SIGTERM') console.error(`server exited with code ${code} after SIGTERM`);
    }
  });

  let finishedJobId;

  test('a sleep job runs to completion while it is watched', { timeout: 60_000 }, async () => {
    // A short delay keeps the job SCHEDULED until the watch is open, so its phase events
    // cannot happen before the stream starts.
    const { job, deduplicated } = await client.enqueue('sleep', {
      payload: { seconds: 0.3, phases: 3 },
      delaySeconds: 1,
      labels: { suite: 'node-client' },
    });
    assert.equal(deduplicated, false);
    assert.match(job.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(job.kind, 'sleep');
    assert.deepEqual(JSON.parse(job.payload.toString('utf8')), { seconds: 0.3, phases: 3 });
    assert.equal(job.labels.suite, 'node-client');
    assert.ok(['JOB_STATE_SCHEDULED', 'JOB_STATE_QUEUED'].includes(job.state), job.state);

    const events = await collect(client.watch(job.id));
    const summary = events.map((e) => `${e.sequence}:${e.type}${e.phase ? `(${e.phase})` : ''}`).join(' ');

    assert.ok(events.length > 0, 'no events');
    assert.equal(events[0].type, 'EVENT_TYPE_SNAPSHOT', summary);
    assert.equal(events[0].jobId, job.id);
    assert.equal(events[0].job.id, job.id);

    for (let i = 1; i < events.length; i += 1) {
      assert.ok(BigInt(events[i].sequence) > BigInt(events[i - 1].sequence), `sequences not strictly increasing: ${summary}`);
      assert.equal(events[i].jobId, job.id);
    }

    const phaseStarts = events.filter((e) => e.type === 'EVENT_TYPE_PHASE_STARTED').map((e) => e.phase);
    assert.deepEqual(phaseStarts, ['step-1', 'step-2', 'step-3'], summary);

    const last = events.at(-1);
    assert.equal(last.type, 'EVENT_TYPE_SUCCEEDED', summary);
    assert.equal(last.job.state, 'JOB_STATE_SUCCEEDED');

    const got = await client.get(job.id);
    assert.equal(got.state, 'JOB_STATE_SUCCEEDED');
    assert.equal(got.id, job.id);
    assert.equal(got.phases.length, 3);
    assert.ok(got.phases.every((p) => p.state === 'PHASE_STATE_SUCCEEDED'), JSON.stringify(got.phases.map((p) => p.state)));
    assert.ok(BigInt(got.lastSequence) >= BigInt(last.sequence));
    finishedJobId = job.id;

    // Resuming after the snapshot replays the stored events the live stream carried, then ends.
    const replay = await collect(client.watch(job.id, { afterSequence: events[0].sequence }));
    assert.deepEqual(
      replay.map((e) => [e.sequence, e.type, e.phase]),
      events.slice(1).map((e) => [e.sequence, e.type, e.phase]),
    );
  });

  test('get of an unknown id rejects with NOT_FOUND / JOB_NOT_FOUND', async () => {
    await expectJobwireError(client.get(randomUUID()), 'NOT_FOUND', 'JOB_NOT_FOUND');
  });

  test('watch of an unknown id throws NOT_FOUND / JOB_NOT_FOUND from the iterator', async () => {
    await expectJobwireError(collect(client.watch(randomUUID())), 'NOT_FOUND', 'JOB_NOT_FOUND');
  });

  test('cancel of a finished job rejects with FAILED_PRECONDITION / INVALID_TRANSITION', async () => {
    if (!finishedJobId) {
      assert.fail('needs the job of the first test, which did not finish');
    }
    await expectJobwireError(client.cancel(finishedJobId, 'too late'), 'FAILED_PRECONDITION', 'INVALID_TRANSITION');
  });

  test('cancel of a delayed job, then retry, then cancel again', async () => {
    const { job } = await client.enqueue('sleep', {
      payload: { seconds: 30, phases: 1 },
      delaySeconds: 3600,
    });
    assert.equal(job.state, 'JOB_STATE_SCHEDULED');

    const cancelled = await client.cancel(job.id, 'changed my mind');
    assert.equal(cancelled.state, 'JOB_STATE_CANCELLED');
    assert.equal(cancelled.cancelReason, 'changed my mind');

    const retried = await client.retry(job.id, { fromStart: false });
    assert.equal(retried.state, 'JOB_STATE_QUEUED');
    assert.equal(retried.cancelRequested, false);
    assert.equal(retried.cancelReason, '');

    // Clean up: the retried job is QUEUED (cancelled at once) or already RUNNING (cancel requested).
    const again = await client.cancel(job.id, 'cleanup');
    assert.ok(
      again.state === 'JOB_STATE_CANCELLED' || (again.state === 'JOB_STATE_RUNNING' && again.cancelRequested),
      `unexpected state after the cleanup cancel: ${again.state}`,
    );
  });

  test('listJobs filters by labels and finish time; cancelJobs and retryJobs act on what matches', async () => {
    const queue = `node-${randomUUID().slice(0, 8)}`;
    const ids = [];
    for (const env of ['prod', 'staging', 'dev']) {
      const { job } = await client.enqueue('noop', { queue, delaySeconds: 3600, labels: { env } });
      ids.push(job.id);
    }
    const counted = await client.cancelJobs({ queue, labelIn: { env: ['prod', 'staging'] } }, { dryRun: true });
    assert.deepEqual(counted, { matched: 2, changed: 0, cancelRequested: 0, skipped: {}, dryRun: true });
    const done = await client.cancelJobs({ queue, states: ['SCHEDULED'], labelIn: { env: ['prod', 'staging'] } },
      { reason: 'node bulk' });
    assert.deepEqual(done, { matched: 2, changed: 2, cancelRequested: 0, skipped: {}, dryRun: false });
    assert.equal((await client.get(ids[0])).cancelReason, 'node bulk');

    const recent = { queue, labelKeys: ['env'], finishedAfter: new Date(Date.now() - 60_000) };
    const finished = await client.listJobs(recent, { pageSize: 1 });
    assert.deepEqual(finished.jobs.map((j) => j.id), [ids[1]], 'newest first, one per page');
    assert.ok(finished.nextPageToken);
    const next = await client.listJobs(recent, { pageSize: 1, pageToken: finished.nextPageToken });
    assert.deepEqual(next.jobs.map((j) => j.id), [ids[0]]);

    const retried = await client.retryJobs({ queue });
    assert.deepEqual(retried, { matched: 3, changed: 2, cancelRequested: 0, skipped: { STILL_ACTIVE: 1 }, dryRun: false });

    await assert.rejects(client.cancelJobs({}), (err) => {
      assert.ok(err instanceof JobwireError);
      assert.equal(err.codeName, 'INVALID_ARGUMENT');
      assert.deepEqual(err.fieldViolations.map((v) => v.field), ['filter']);
      return true;
    });
    await assert.rejects(client.listJobs({ labelIn: { env: [] } }), (err) => {
      assert.deepEqual(err.fieldViolations.map((v) => v.field), ['label_in']);
      return true;
    });
  });
});
