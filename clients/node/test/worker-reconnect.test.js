// An idle Node worker keeps its session by pinging, gives up on a server that stopped answering, and
// comes back after losing its server:
//  - the connection drops (a TCP relay between worker and server cuts it and refuses new ones for a
//    while): the worker reconnects, names the job it still runs in its hello, the server keeps it, and
//    the phase done that was waiting is sent on the new session: the job ends on its first attempt;
//  - the server restarts (SIGTERM, then the same database on the same address): the draining server
//    stops the running phase, the worker reconnects to the new process and runs the job again from the
//    phase that was interrupted, and takes new jobs;
//  - the server is killed (SIGKILL) and started again: the new process does not hold the job the worker
//    still runs, so the welcome drops it (its handler is aborted); once the job's lease runs out the
//    server requeues it and the worker runs it again.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as pause } from 'node:timers/promises';

import { JobwireClient, Worker } from '../src/index.js';
import { startServer } from './live-server.js';
import { deferred, eventsOf, finalState, summary, within } from './waiting.js';

const FAST_RECONNECT = { initialBackoffMs: 20, maxBackoffMs: 200 };
// Short leases, so that a job left by a killed server is requeued within the test.
const FLAGS = ['--shutdown-grace', '1', '--cancel-grace', '0.5', '--lease-ttl', '2'];

/** The next time `worker` emits `name` with an argument `accept` takes. */
function next(worker, name, accept = () => true) {
  return new Promise((resolve) => {
    const listener = (value) => {
      if (!accept(value)) return;
      worker.off(name, listener);
      resolve(value);
    };
    worker.on(name, listener);
  });
}

/**
 * A TCP relay to `target` on a free loopback port: `cut()` closes every connection through it and
 * refuses new ones until `restore()`.
 */
async function relay(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const sockets = new Set();
  let refusing = false;
  const track = (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  };
  const listener = net.createServer((inbound) => {
    track(inbound);
    if (refusing) {
      inbound.destroy();
      return;
    }
    const outbound = net.connect(port, host);
    track(outbound);
    inbound.pipe(outbound).pipe(inbound);
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  await new Promise((resolve) => listener.listen(0, '127.0.0.1', resolve));
  return {
    target: `127.0.0.1:${listener.address().port}`,
    cut() {
      refusing = true;
      for (const socket of sockets) socket.destroy();
    },
    restore() {
      refusing = false;
    },
    close: () => new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      listener.close(resolve);
    }),
  };
}

describe('a Node worker reconnects', { timeout: 120_000 }, () => {
  let dir;
  let server;
  let client;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobwire-node-worker-'));
    server = await startServer({ dir, flags: FLAGS });
    client = new JobwireClient(server.target, {
      timeoutMs: 15_000, channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 500 },
    });
  });

  after(async () => {
    client?.close();
    await server?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('an idle worker keeps its session: it pings at the welcome\'s interval', async () => {
    const worker = new Worker({ target: server.target, slots: 1, reconnect: FAST_RECONNECT });
    worker.kind('node.idle').phase('work', () => 'awake');
    const disconnects = [];
    worker.on('disconnect', (info) => disconnects.push(info));
    const welcomed = next(worker, 'session');
    const running = worker.run();
    try {
      const { pingIntervalMs } = await within(10_000, welcomed, 'the welcome');
      assert.equal(pingIntervalMs, 500, 'a quarter of the 2 s lease');
      const sessions = [];
      worker.on('session', (session) => sessions.push(session));
      // The server ends a session it has not heard from for three ping intervals: stay idle for six.
      await pause(6 * pingIntervalMs); // sleep-ok: the idle time under test
      assert.deepEqual([disconnects, sessions], [[], []], 'the session was kept');
      const { job } = await client.enqueue('node.idle');
      assert.equal(finalState(await within(10_000, eventsOf(client, job.id), 'the job')), 'JOB_STATE_SUCCEEDED');
      assert.equal((await client.get(job.id)).phases[0].result.toString(), 'awake');
    } finally {
      await worker.drain({ timeoutMs: 1000 });
      await running;
    }
  });

  test('a worker gives up on a frozen server after three silent ping intervals, and comes back', async () => {
    const worker = new Worker({ target: server.target, slots: 1, reconnect: FAST_RECONNECT });
    worker.kind('node.patient').phase('work', () => 'thawed');
    const welcomed = next(worker, 'session');
    const running = worker.run();
    try {
      await within(10_000, welcomed, 'the welcome');
      const gaveUp = next(worker, 'disconnect');
      server.signal('SIGSTOP'); // the connection stays open; nothing answers
      let info;
      try {
        info = await within(10_000, gaveUp, 'giving up on the frozen server');
      } finally {
        server.signal('SIGCONT');
      }
      // CANCELLED: the worker ended the call itself (a session the server ends is UNAVAILABLE).
      assert.equal(info.error?.codeName, 'CANCELLED', info.error?.message);
      await within(15_000, next(worker, 'session'), 'the welcome after the thaw');
      const { job } = await client.enqueue('node.patient');
      assert.equal(finalState(await within(10_000, eventsOf(client, job.id), 'the job')), 'JOB_STATE_SUCCEEDED');
    } finally {
      await worker.drain({ timeoutMs: 1000 });
      await running;
    }
  });

  test('after a dropped connection it keeps its job and sends the report that waited', async () => {
    const link = await relay(server.target);
    const worker = new Worker({ target: link.target, slots: 2, workerId: 'node-relay-worker', reconnect: FAST_RECONNECT });
    const started = deferred();
    const gate = deferred();
    const returned = deferred();
    worker.kind('node.held').phase('work', async (job, { signal }) => {
      started.resolve(job.id);
      await gate.promise;
      returned.resolve(signal.aborted);
      return `done on attempt ${job.attempt}`;
    });
    const firstSession = next(worker, 'session');
    const running = worker.run();
    try {
      await within(10_000, firstSession, 'the first welcome');
      const { job } = await client.enqueue('node.held');
      assert.equal(await within(10_000, started.promise, 'the handler\'s start'), job.id);

      const lost = next(worker, 'disconnect');
      link.cut();
      const { error } = await within(10_000, lost, 'the disconnect');
      assert.equal(error?.codeName, 'UNAVAILABLE', error?.message);

      // The phase ends while the worker cannot reach the server: its report waits for the next session.
      gate.resolve();
      assert.equal(await within(5000, returned.promise, 'the handler\'s return'), false, 'the handler was not aborted');
      assert.equal(worker.busy, 1, 'the job still holds its slot');
      const secondSession = next(worker, 'session');
      link.restore();
      const welcome = await within(15_000, secondSession, 'the welcome after the drop');
      assert.deepEqual([welcome.kept, welcome.dropped], [[job.id], []]);

      const events = await within(15_000, eventsOf(client, job.id), 'the job');
      assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
      const stored = await client.get(job.id);
      assert.equal(stored.attempt, 1);
      assert.equal(stored.phases[0].result.toString(), 'done on attempt 1');
      assert.deepEqual(stored.errorHistory, [], 'nothing was interrupted');
    } finally {
      await worker.drain({ timeoutMs: 1000 });
      await running;
      await link.close();
    }
  });

  test('after a server restart it resumes the interrupted job at its phase and takes new work', async () => {
    const worker = new Worker({ target: server.target, slots: 2, workerId: 'node-restart-worker', reconnect: FAST_RECONNECT });
    const runs = [];
    const secondPhase = deferred();
    const stopped = deferred();
    worker.kind('node.resumable')
      .phase('prepare', async (job) => {
        runs.push(['prepare', job.attempt]);
        return 'prepared';
      })
      .phase('render', (job, { signal }) => {
        runs.push(['render', job.attempt, job.results.prepare?.toString()]);
        if (runs.filter(([phase]) => phase === 'render').length > 1) return 'rendered';
        secondPhase.resolve(job.id);
        return new Promise((_, reject) => signal.addEventListener('abort', () => {
          stopped.resolve(signal.reason);
          reject(signal.reason);
        }));
      });
    const sessions = [];
    worker.on('session', (session) => sessions.push(session));
    const disconnects = [];
    worker.on('disconnect', ({ error }) => disconnects.push(error));
    const firstSession = next(worker, 'session');
    const running = worker.run();
    try {
      await within(10_000, firstSession, 'the first welcome');
      const { job } = await client.enqueue('node.resumable', { maxAttempts: 1 });
      assert.equal(await within(10_000, secondPhase.promise, 'the second phase'), job.id);

      // SIGTERM: the server drains; the phase still running is stopped with reason "shutdown".
      const { code } = await server.stop();
      assert.equal(code, 0);
      const reason = await within(5000, stopped.promise, 'the stop');
      assert.equal(reason.why, 'cancel');
      assert.match(reason.message, /shutdown/);
      assert.ok(disconnects.length >= 1, 'the worker saw its session end');

      const welcomedAgain = next(worker, 'session');
      server = await startServer({ dir, target: server.target, flags: FLAGS });
      await within(15_000, welcomedAgain, 'the welcome from the new server');

      const events = await within(20_000, eventsOf(client, job.id), 'the job');
      assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
      const stored = await client.get(job.id);
      // One attempt allowed, and a second run: the shutdown's interruption did not spend the first.
      assert.deepEqual([stored.attempt, stored.maxAttempts], [2, 1]);
      assert.equal(stored.errorHistory.at(-1)?.type, 'SHUTDOWN');
      assert.equal(stored.errorHistory.at(-1)?.interrupted, true);
      assert.deepEqual(stored.phases.map((p) => [p.name, p.result.toString()]), [['prepare', 'prepared'], ['render', 'rendered']]);
      assert.deepEqual(runs, [['prepare', 1], ['render', 1, 'prepared'], ['render', 2, 'prepared']],
        'the interrupted job resumed at the phase that was stopped');

      // New work after the restart.
      const { job: fresh } = await client.enqueue('node.resumable');
      const freshEvents = await within(20_000, eventsOf(client, fresh.id), 'a new job');
      assert.equal(finalState(freshEvents), 'JOB_STATE_SUCCEEDED', summary(freshEvents));
      assert.ok(sessions.length >= 2, `sessions: ${sessions.length}`);
      assert.notEqual(sessions[0].sessionId, sessions.at(-1).sessionId);
    } finally {
      await worker.drain({ timeoutMs: 1000 });
      await running;
    }
  });

  test('after the server was killed it drops the job the new server does not hold, and runs it again', async () => {
    const worker = new Worker({ target: server.target, slots: 2, workerId: 'node-crash-worker', reconnect: FAST_RECONNECT });
    const runs = [];
    const first = deferred();
    const aborted = deferred();
    worker.kind('node.crashproof').phase('work', (job, { signal }) => {
      runs.push(job.attempt);
      if (runs.length > 1) return `attempt ${job.attempt}`;
      first.resolve(job.id);
      return new Promise((_, reject) => signal.addEventListener('abort', () => {
        aborted.resolve(signal.reason);
        reject(signal.reason);
      }));
    });
    const firstSession = next(worker, 'session');
    const running = worker.run();
    try {
      await within(10_000, firstSession, 'the first welcome');
      const { job } = await client.enqueue('node.crashproof', { maxAttempts: 3 });
      assert.equal(await within(10_000, first.promise, 'the first run'), job.id);

      const { signal } = await server.stop('SIGKILL');
      assert.equal(signal, 'SIGKILL');
      const welcomedAgain = next(worker, 'session');
      server = await startServer({ dir, target: server.target, flags: FLAGS });
      const welcome = await within(15_000, welcomedAgain, 'the welcome from the new server');
      assert.deepEqual([welcome.kept, welcome.dropped], [[], [job.id]]);
      assert.equal((await within(5000, aborted.promise, 'the abort')).why, 'lost');

      const events = await within(30_000, eventsOf(client, job.id), 'the job');
      assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
      const stored = await client.get(job.id);
      assert.deepEqual(runs, [1, 2]);
      assert.equal(stored.phases[0].result.toString(), 'attempt 2');
      assert.equal(stored.errorHistory.at(-1)?.interrupted, true, 'the lost attempt is recorded as interrupted');
    } finally {
      await worker.drain({ timeoutMs: 1000 });
      await running;
    }
  });
});
