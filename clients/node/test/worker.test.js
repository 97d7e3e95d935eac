// The Node worker against a real server: a three-phase job with progress seen by a watcher, a retry
// (RetryableError, then success), a PermanentError that fails the job at once, a partial retry resuming
// at the failed phase, a result too large, slots respected, a cancel that reaches the handler's
// AbortSignal, a handler that ignores its cancel keeping its slot until it returns, drain (running jobs
// finish, nothing new is taken, what does not finish in time is given back) and a refused hello
// (KIND_MISMATCH). Each test runs its own Workers in this process, on kinds of its own.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';

import { JobwireClient, JobwireError, PermanentError, RetryableError, Worker } from '../src/index.js';
import { startServer } from './live-server.js';
import { deferred, eventsOf, finalState, summary, within } from './waiting.js';

describe('a Node worker runs jobs for a live server', { timeout: 120_000 }, () => {
  let server;
  let client;
  const workers = [];

  /** A worker with `declare(worker)` applied, running, once the server has welcomed it. */
  async function startWorker(declare, options = {}) {
    const worker = new Worker({ target: server.target, slots: 2, ...options });
    declare(worker);
    const welcomed = once(worker, 'session');
    const running = worker.run();
    workers.push({ worker, running });
    await within(10_000, Promise.race([welcomed, running.then(() => { throw new Error('run() ended'); })]), 'the welcome');
    return worker;
  }

  before(async () => {
    server = await startServer({ flags: ['--cancel-grace', '2', '--max-payload-bytes', '4096'] });
    client = new JobwireClient(server.target, { timeoutMs: 15_000 });
  });

  after(async () => {
    await Promise.all(workers.map(({ worker }) => worker.drain({ timeoutMs: 1000 })));
    client?.close();
    await server?.stop();
  });

  test('three phases with progress: the watcher sees each phase, its progress and its result', async () => {
    const seen = [];
    const watching = deferred(); // the first phase reports once the watch has its snapshot
    await startWorker((worker) => worker.kind('node.thumbnail')
      .phase('fetch', async (job, { progress, phase }) => {
        seen.push({ phase, id: job.id, attempt: job.attempt, kind: job.kind, queue: job.queue, labels: job.labels, payload: job.json() });
        await watching.promise;
        progress(40, 'downloading');
        return Buffer.from(`raw:${job.json().name}`);
      })
      .phase('resize', async (job, { progress }) => {
        seen.push({ phase: 'resize', results: Object.keys(job.results) });
        progress(60, 'resizing');
        return `${job.results.fetch.toString()}:small`;
      })
      .phase('store', async (job, { progress }) => {
        seen.push({ phase: 'store', results: Object.keys(job.results) });
        progress(100, 'stored');
        return { stored: job.results.resize.toString() };
      }));

    const { job } = await client.enqueue('node.thumbnail', { payload: { name: 'cat' }, labels: { team: 'media' } });
    const events = await within(30_000, eventsOf(client, job.id, () => watching.resolve()), 'the job');

    assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
    for (const [phase, percent, message] of [['fetch', 40, 'downloading'], ['resize', 60, 'resizing'], ['store', 100, 'stored']]) {
      const progress = events.find((e) => e.type === 'EVENT_TYPE_PROGRESS' && e.phase === phase);
      assert.ok(progress, `no progress of ${phase}: ${summary(events)}`);
      const reported = progress.job.phases.find((p) => p.name === phase).progress;
      assert.deepEqual([reported.percent, reported.message], [percent, message]);
      const started = events.findIndex((e) => e.phase === phase && e.type === 'EVENT_TYPE_PHASE_STARTED');
      const succeeded = events.findIndex((e) => e.phase === phase && e.type === 'EVENT_TYPE_PHASE_SUCCEEDED');
      assert.ok(events.indexOf(progress) < succeeded, summary(events));
      // The first phase may have started before the watch's snapshot; the later ones are seen starting.
      if (phase !== 'fetch') assert.ok(started >= 0 && started < events.indexOf(progress), summary(events));
    }

    const stored = await client.get(job.id);
    assert.deepEqual(stored.phases.map((p) => [p.name, p.state, p.result.toString()]), [
      ['fetch', 'PHASE_STATE_SUCCEEDED', 'raw:cat'],
      ['resize', 'PHASE_STATE_SUCCEEDED', 'raw:cat:small'],
      ['store', 'PHASE_STATE_SUCCEEDED', '{"stored":"raw:cat:small"}'],
    ]);
    assert.deepEqual(seen, [
      { phase: 'fetch', id: job.id, attempt: 1, kind: 'node.thumbnail', queue: 'default', labels: { team: 'media' }, payload: { name: 'cat' } },
      { phase: 'resize', results: ['fetch'] },
      { phase: 'store', results: ['fetch', 'resize'] },
    ]);
  });

  test('a RetryableError retries the job after retryAfterMs, and the next attempt succeeds', async () => {
    const attempts = [];
    const watching = deferred(); // the first attempt fails once the watch has its snapshot
    await startWorker((worker) => worker.kind('node.flaky', { maxAttempts: 3 })
      .phase('call', async (job) => {
        attempts.push({ attempt: job.attempt, at: Date.now() });
        if (job.attempt === 1) {
          await watching.promise;
          throw new RetryableError('upstream busy', { retryAfterMs: 300 });
        }
        return 'ok';
      }));

    const { job } = await client.enqueue('node.flaky');
    const events = await within(30_000, eventsOf(client, job.id, () => watching.resolve()), 'the job');

    assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
    assert.ok(events.some((e) => e.type === 'EVENT_TYPE_RETRY_SCHEDULED'), summary(events));
    assert.deepEqual(attempts.map((a) => a.attempt), [1, 2]);
    assert.ok(attempts[1].at - attempts[0].at >= 250, `retried after ${attempts[1].at - attempts[0].at} ms, asked 300`);
    const stored = await client.get(job.id);
    assert.equal(stored.attempt, 2);
    assert.equal(stored.errorHistory.length, 1);
    assert.deepEqual(
      [stored.errorHistory[0].type, stored.errorHistory[0].message, stored.errorHistory[0].retryable, stored.errorHistory[0].phase],
      ['RetryableError', 'upstream busy', true, 'call'],
    );
    assert.equal(stored.phases[0].result.toString(), 'ok');
  });

  test('a partial retry resumes at the failed phase, with the earlier phase\'s result', async () => {
    const runs = [];
    await startWorker((worker) => worker.kind('node.partial', { maxAttempts: 1 })
      .phase('first', (job) => {
        runs.push(['first', job.attempt]);
        return 'kept';
      })
      .phase('second', (job) => {
        runs.push(['second', job.attempt, job.results.first?.toString()]);
        if (job.attempt === 1) throw new PermanentError('not yet');
        return 'done';
      }));
    const { job } = await client.enqueue('node.partial');
    assert.equal(finalState(await within(15_000, eventsOf(client, job.id), 'the first attempt')), 'JOB_STATE_FAILED');

    await client.retry(job.id);
    assert.equal(finalState(await within(15_000, eventsOf(client, job.id), 'the retry')), 'JOB_STATE_SUCCEEDED');
    assert.deepEqual(runs, [['first', 1], ['second', 1, 'kept'], ['second', 2, 'kept']]);
    assert.deepEqual((await client.get(job.id)).phases.map((p) => p.result.toString()), ['kept', 'done']);
  });

  test('a PermanentError fails the job at once, with attempts left', async () => {
    let calls = 0;
    await startWorker((worker) => worker.kind('node.doomed', { maxAttempts: 5 })
      .phase('validate', async () => {
        calls += 1;
        throw new PermanentError('the image is not an image');
      })
      .phase('never', async () => assert.fail('a phase after a permanent failure ran')));

    const { job } = await client.enqueue('node.doomed');
    const events = await within(30_000, eventsOf(client, job.id), 'the job');

    assert.equal(finalState(events), 'JOB_STATE_FAILED', summary(events));
    const stored = await client.get(job.id);
    assert.equal(stored.state, 'JOB_STATE_FAILED');
    assert.equal(stored.attempt, 1);
    assert.deepEqual([stored.error.type, stored.error.message, stored.error.retryable, stored.error.phase],
      ['PermanentError', 'the image is not an image', false, 'validate']);
    assert.equal(calls, 1);
  });

  test('a result larger than the server takes fails the job, permanently', async () => {
    await startWorker((worker) => worker.kind('node.bulky', { maxAttempts: 3 })
      .phase('fits', () => Buffer.alloc(4096, 1))
      .phase('too-big', () => 'x'.repeat(4097)));
    const { job } = await client.enqueue('node.bulky');
    const events = await within(30_000, eventsOf(client, job.id), 'the job');

    assert.equal(finalState(events), 'JOB_STATE_FAILED', summary(events));
    const stored = await client.get(job.id);
    assert.equal(stored.phases[0].result.length, 4096);
    assert.deepEqual([stored.error.type, stored.error.retryable, stored.error.phase, stored.attempt],
      ['RESULT_TOO_LARGE', false, 'too-big', 1]);
    assert.match(stored.error.message, /4097 bytes/);
  });

  test('a cancel reaches the running handler through its AbortSignal', async () => {
    const started = deferred();
    const aborted = deferred();
    await startWorker((worker) => worker.kind('node.long')
      .phase('wait', (job, { signal }) => new Promise((_, reject) => {
        signal.addEventListener('abort', () => {
          aborted.resolve({ reason: signal.reason, at: performance.now() });
          reject(signal.reason);
        });
        started.resolve(job.id);
      })));

    const { job } = await client.enqueue('node.long');
    assert.equal(await within(10_000, started.promise, 'the handler\'s start'), job.id);
    const stream = client.watch(job.id);
    assert.equal((await stream.next()).value.type, 'EVENT_TYPE_SNAPSHOT');
    const asked = performance.now();
    await client.cancel(job.id, 'changed my mind');
    const { reason, at } = await within(5000, aborted.promise, 'the abort');
    const events = [];
    await within(10_000, (async () => { for await (const ev of stream) events.push(ev); })(), 'the job');

    assert.equal(reason.why, 'cancel');
    assert.match(reason.message, /changed my mind/);
    assert.ok(at - asked < 1000, `the cancel reached the handler ${Math.round(at - asked)} ms after it was asked`);
    assert.deepEqual(events.map((e) => e.type), ['EVENT_TYPE_CANCEL_REQUESTED', 'EVENT_TYPE_CANCELLED'], summary(events));
    const stored = await client.get(job.id);
    assert.equal(stored.state, 'JOB_STATE_CANCELLED');
    assert.equal(stored.phases[0].state, 'PHASE_STATE_CANCELLED');
  });

  test('jobs run concurrently up to the slots, never beyond', async () => {
    let running = 0;
    let most = 0;
    const twoRunning = deferred();
    const gate = deferred();
    await startWorker((w) => w.kind('node.parallel').phase('work', async () => {
      running += 1;
      most = Math.max(most, running);
      if (running === 2) twoRunning.resolve();
      await gate.promise;
      running -= 1;
      return 'ok';
    }), { slots: 2 });
    await startWorker((w) => w.kind('node.probe2').phase('probe', () => 'probed'));

    const jobs = [];
    for (let i = 0; i < 4; i += 1) jobs.push((await client.enqueue('node.parallel')).job);
    await within(10_000, twoRunning.promise, 'two jobs running at once');
    // A job enqueued after the four, run by another worker: the server has dispatched since.
    const { job: probe } = await client.enqueue('node.probe2');
    assert.equal(finalState(await within(10_000, eventsOf(client, probe.id), 'the probe')), 'JOB_STATE_SUCCEEDED');
    const states = await Promise.all(jobs.map(async (job) => (await client.get(job.id)).state));
    assert.deepEqual(states.sort(), ['JOB_STATE_QUEUED', 'JOB_STATE_QUEUED', 'JOB_STATE_RUNNING', 'JOB_STATE_RUNNING']);

    gate.resolve();
    for (const job of jobs) assert.equal(finalState(await within(15_000, eventsOf(client, job.id), 'a job')), 'JOB_STATE_SUCCEEDED');
    assert.equal(most, 2);
  });

  test('a handler that ignores its cancel keeps its slot until it returns', async () => {
    const timeline = [];
    const started = deferred();
    const gate = deferred();
    const worker = await startWorker((w) => w.kind('node.stubborn').phase('hold', async (job, { progress }) => {
      if (job.json().first) {
        progress(10, 'holding');
        started.resolve(job.id);
        await gate.promise; // deaf to its signal
        timeline.push('first returned');
        return 'late';
      }
      timeline.push('second started');
      return 'second';
    }), { slots: 1 });
    await startWorker((w) => w.kind('node.probe').phase('probe', () => 'probed'));

    const { job: first } = await client.enqueue('node.stubborn', { payload: { first: true } });
    await within(10_000, started.promise, 'the first job\'s start');
    const warned = new Promise((resolve) => worker.on('warning', (m) => m.includes(first.id) && resolve(m)));
    // Cancel once the server has the handler's progress: it knows the phase started.
    const progressed = deferred();
    const watching = eventsOf(client, first.id, () => {}, (ev) => ev.type === 'EVENT_TYPE_PROGRESS' && progressed.resolve());
    await within(10_000, progressed.promise, 'the progress');
    await client.cancel(first.id, 'stop');
    // After the cancel's grace (2 s here) the server finishes the job without the handler.
    assert.equal(finalState(await within(10_000, watching, 'the abandonment')), 'JOB_STATE_CANCELLED');
    assert.match(await within(5000, warned, 'the warning'), /ignored its cancellation .* keeps its slot until it returns/);
    assert.equal(worker.busy, 1, 'the abandoned handler still takes the one slot');

    const { job: second } = await client.enqueue('node.stubborn', { payload: { first: false } });
    // A job enqueued after the second one, run by another worker: the server has dispatched since.
    const { job: probe } = await client.enqueue('node.probe');
    assert.equal(finalState(await within(10_000, eventsOf(client, probe.id), 'the probe')), 'JOB_STATE_SUCCEEDED');
    assert.equal((await client.get(second.id)).state, 'JOB_STATE_QUEUED', 'no slot was free for the second job');
    assert.deepEqual(timeline, []);

    gate.resolve();
    assert.equal(finalState(await within(10_000, eventsOf(client, second.id), 'the second job')), 'JOB_STATE_SUCCEEDED');
    assert.deepEqual(timeline, ['first returned', 'second started']);
    assert.deepEqual((await client.get(first.id)).phases.map((p) => p.state), ['PHASE_STATE_CANCELLED'], 'the late result was dropped');
  });

  test('drain lets running jobs finish and takes nothing new', async () => {
    const ranBy = [];
    const started = deferred();
    const gate = deferred();
    const declare = (name) => (w) => w.kind('node.drained').phase('work', async (job) => {
      ranBy.push([job.json().n, name]);
      if (job.json().n === 1) {
        started.resolve();
        await gate.promise;
      }
      return name;
    });
    const draining = await startWorker(declare('first'));
    const { job: one } = await client.enqueue('node.drained', { payload: { n: 1 } });
    await within(10_000, started.promise, 'the first job\'s start');

    const order = [];
    const drained = draining.drain().then(() => order.push('drained'));
    const { job: two } = await client.enqueue('node.drained', { payload: { n: 2 } });
    await startWorker(declare('second'));
    assert.equal(finalState(await within(15_000, eventsOf(client, two.id), 'the job enqueued during the drain')), 'JOB_STATE_SUCCEEDED');
    assert.deepEqual(order, [], 'the drain waits for the running job');

    order.push('released');
    gate.resolve();
    await within(10_000, drained, 'the drain');
    assert.deepEqual(order, ['released', 'drained']);
    assert.deepEqual(ranBy.sort(), [[1, 'first'], [2, 'second']]);
    const stored = await client.get(one.id);
    assert.deepEqual([stored.state, stored.attempt, stored.phases[0].result.toString()], ['JOB_STATE_SUCCEEDED', 1, 'first']);
  });

  test('drain gives back a job that does not finish in time, without spending its attempt', async () => {
    const started = deferred();
    const stopped = deferred();
    const draining = await startWorker((w) => w.kind('node.slow').phase('work', (job, { signal }) => new Promise((resolve, reject) => {
      started.resolve();
      signal.addEventListener('abort', () => {
        stopped.resolve(signal.reason);
        reject(signal.reason);
      });
    })));
    const { job } = await client.enqueue('node.slow', { maxAttempts: 1 });
    await within(10_000, started.promise, 'the start');

    await within(10_000, draining.drain({ timeoutMs: 200 }), 'the drain');
    assert.equal((await within(1000, stopped.promise, 'the stop')).why, 'drain');
    const back = await client.get(job.id);
    assert.equal(back.state, 'JOB_STATE_QUEUED');
    assert.deepEqual([back.errorHistory.at(-1).type, back.errorHistory.at(-1).interrupted], ['RELEASED', true]);

    await startWorker((w) => w.kind('node.slow').phase('work', () => 'finished elsewhere'));
    assert.equal(finalState(await within(15_000, eventsOf(client, job.id), 'the job')), 'JOB_STATE_SUCCEEDED');
    assert.equal((await client.get(job.id)).phases[0].result.toString(), 'finished elsewhere');
  });

  test('a worker declaring a known kind with other phases is refused for good: KIND_MISMATCH', async () => {
    await startWorker((w) => w.kind('node.versioned').phase('one', () => 1));
    const changed = new Worker({ target: server.target });
    changed.kind('node.versioned').phase('one', () => 1).phase('two', () => 2);
    const disconnects = [];
    changed.on('disconnect', (info) => disconnects.push(info));
    await assert.rejects(within(10_000, changed.run(), 'the refusal'), (err) => {
      assert.ok(err instanceof JobwireError);
      assert.deepEqual([err.codeName, err.reason, err.errorMetadata.kind], ['FAILED_PRECONDITION', 'KIND_MISMATCH', 'node.versioned']);
      return true;
    });
    assert.deepEqual(disconnects, [], 'a refusal is not retried');
  });
});
