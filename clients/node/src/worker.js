// Worker: runs the phases of jobs of the kinds it declares, for a jobwire server, over one
// WorkerService.Connect stream per session (proto/jobwire/v1/worker.proto is the contract and
// docs/workers.md describes it). The server drives the phases: it assigns a job at one phase, the
// worker runs it and reports it done, and the server's ack names the next phase.
//
//   const worker = new Worker({ target: '127.0.0.1:50051', token, queues: ['media'], slots: 4 });
//   worker.kind('thumbnail')
//     .phase('fetch', async (job, { signal, progress }) => download(job.json().url, { signal }))
//     .phase('resize', async (job) => resize(job.results.fetch));
//   await worker.run(); // until worker.drain() resolves, or a refusal that reconnecting cannot fix

import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';

import { toJobwireError } from './errors.js';
import {
  abortReason, checkName, durationToMs, encodeResult, failureOf, jobView, Kind, tooLarge, wire,
} from './handlers.js';
import { bearerMetadata, channelCredentials, loadService } from './transport.js';

export { Kind, PermanentError, RetryableError } from './handlers.js';

const SDK_NAME = 'jobwire-node';
const SDK_VERSION = JSON.parse(fs.readFileSync(
  path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8')).version;

const WORKER_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_PROGRESS_MESSAGE = 1024;

/**
 * Slots of a worker that names none: as many as the server's in-process pool (`--concurrency`). Slots
 * are the worker's pipeline depth: each job's commit and round trip overlap the others'.
 */
export const DEFAULT_SLOTS = 100;

/** How a worker reconnects by default: 100 ms doubling to 5 s, each wait randomised down by up to half. */
export const DEFAULT_RECONNECT = Object.freeze({ initialBackoffMs: 100, maxBackoffMs: 5000, multiplier: 2 });

// Ending statuses that a new session would meet again: run() rejects with them instead of reconnecting.
const FATAL_CODES = new Set([
  grpc.status.INVALID_ARGUMENT, grpc.status.FAILED_PRECONDITION, grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED, grpc.status.UNIMPLEMENTED,
]);

// A phase still running after this long sends `started`; one that reports sooner needs none (its progress
// or phase done acknowledges the hand-off), which saves a message per short job.
const STARTED_AFTER_MS = 50;
// Messages sent as one batch at most.
const MAX_BATCH = 256;
// After a drained worker half-closes its stream, how long the server has to end it.
const CLOSE_WAIT_MS = 2000;
// How long a drain waits by default for running jobs before it gives them back.
const DRAIN_TIMEOUT_MS = 30_000;
// After a drain's timeout, how long stopped handlers get to return before their jobs are left to the server.
const RELEASE_GRACE_MS = 5000;

function defaultWorkerId() {
  const host = os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100) || 'host';
  return `${host}:${process.pid}`;
}

// ---------------------------------------------------------------------------------------------
// Worker

/**
 * A remote worker. Declare kinds with `kind()`, then `await run()`: it connects, says hello with its
 * kinds, runs up to `slots` assignments at once and reconnects (with jittered backoff, keeping the
 * jobs it runs) whenever its stream ends, until `drain()` is called.
 *
 * Events: 'session' ({sessionId, leaseTtlMs, pingIntervalMs, kept, dropped}) after each welcome;
 * 'disconnect' ({error, retryInMs}) when a session ends and another will be tried; 'warning'
 * (message) for what the server refused or a handler that ignores its cancellation.
 */
export class Worker extends EventEmitter {
  constructor({
    target, token, tls, queues = [], slots = DEFAULT_SLOTS, workerId = defaultWorkerId(), channelOptions,
    protoDir, reconnect,
  } = {}) {
    super();
    if (!target) throw new TypeError('target is required, e.g. "127.0.0.1:50051"');
    if (!Number.isInteger(slots) || slots < 1 || slots > 1024) throw new RangeError('slots must be an integer within 1-1024');
    if (!WORKER_ID_PATTERN.test(workerId)) throw new TypeError(`workerId ${JSON.stringify(workerId)} must be 1-128 letters, digits, '.', '-', '_' or ':'`);
    for (const queue of queues) checkName('queue', queue);
    this.slots = slots;
    this.workerId = workerId;
    this.queues = [...queues];
    this._token = token ?? null;
    this._reconnect = { ...DEFAULT_RECONNECT, ...(reconnect ?? {}) };
    const Service = loadService(protoDir, 'WorkerService');
    this._stub = new Service(target, channelCredentials(tls), {
      // The channel's own reconnect backoff must not outlast the worker's (grpc-js's default reaches 120 s).
      'grpc.initial_reconnect_backoff_ms': this._reconnect.initialBackoffMs,
      'grpc.max_reconnect_backoff_ms': this._reconnect.maxBackoffMs,
      ...(channelOptions ?? {}),
    });
    this._kinds = new Map();
    this._tasks = new Map(); // job id#attempt -> task, from its assignment until its closing report is answered
    this._session = null;
    this._state = 'new'; // new -> running -> draining -> stopped
    this._drainDeadlinePassed = false;
    this._wake = null;
    this._done = null;
    this._timers = new Set(); // the drain's, cleared when run() returns
  }

  /** Declares a kind (or returns the one declared): `worker.kind('thumbnail').phase('fetch', fn)`. */
  kind(name, options) {
    let kind = this._kinds.get(name);
    if (kind && options) throw new Error(`kind ${name} is already declared`);
    if (!kind) {
      if (this._state !== 'new') throw new Error('kinds are declared before run()');
      kind = new Kind(name, options);
      this._kinds.set(name, kind);
    }
    return kind;
  }

  /** Slots taken now: the jobs this worker holds, and those taken away whose handlers have not returned. */
  get busy() {
    return this._tasks.size;
  }

  /**
   * Runs until drained. Rejects with a JobwireError when the server refuses the worker in a way a new
   * session would meet again (INVALID_ARGUMENT, FAILED_PRECONDITION such as KIND_MISMATCH,
   * PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED); any other end of a session is retried.
   */
  run() {
    if (this._state !== 'new') return Promise.reject(new Error('run() was already called'));
    if (this._kinds.size === 0) return Promise.reject(new Error('declare at least one kind before run()'));
    for (const kind of this._kinds.values()) {
      if (kind.phases.length === 0) return Promise.reject(new Error(`kind ${kind.name} has no phase`));
    }
    this._state = 'running';
    this._done = this._loop().finally(() => {
      this._state = 'stopped';
      this._timers.forEach(clearTimeout);
      this._stub.close();
    });
    return this._done;
  }

  /**
   * Stops taking work: tells the server (WorkerDraining), gives back assignments still arriving, and
   * lets running jobs finish, every phase. Handlers still running after `timeoutMs` (default 30 s) are
   * aborted (their signal's reason has `why: 'drain'`) and their jobs given back to the queue without
   * spending an attempt; a handler that does not return within 5 s more is left behind (its job's
   * lease runs out on the server). Resolves once every job is closed (finished, or given back) and
   * run() has returned.
   */
  async drain({ timeoutMs = DRAIN_TIMEOUT_MS } = {}) {
    if (this._state === 'new') {
      this._state = 'stopped';
      return;
    }
    if (this._state === 'running') {
      this._state = 'draining';
      this._write(this._session?.welcomed ? this._session : null, { draining: { reason: 'drain' } });
      this._timers.add(setTimeout(() => this._drainDeadline(), timeoutMs));
      this._checkDrained();
    }
    await this._done;
  }

  // -------------------------------------------------------------------------------------------
  // Sessions

  async _loop() {
    let failures = 0;
    for (;;) {
      const { welcomed, error } = await this._connect();
      if (this._state === 'stopped') return;
      if (error && FATAL_CODES.has(error.code)) {
        this._abandonAll();
        throw error;
      }
      if (welcomed) failures = 0;
      const { initialBackoffMs, maxBackoffMs, multiplier } = this._reconnect;
      const ceiling = Math.min(maxBackoffMs, initialBackoffMs * multiplier ** failures);
      const retryInMs = Math.round(ceiling * (0.5 + Math.random() / 2));
      failures += 1;
      this.emit('disconnect', { error, retryInMs });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, retryInMs);
        this._wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this._wake = null;
      if (this._state === 'stopped') return;
    }
  }

  /** One session: resolves when its stream ends, with whether it was welcomed and its error (null if OK). */
  _connect() {
    return new Promise((resolve) => {
      const call = this._stub.Connect(bearerMetadata(this._token));
      const session = {
        call, welcomed: false, closed: false, ended: false, draining: false, credit: 0, lastHeard: Date.now(), ping: null, nonce: 0,
        maxResultBytes: 0, held: 0, pending: [], flushing: false,
      };
      this._session = session;
      call.on('data', (msg) => {
        session.lastHeard = Date.now();
        this._onMessage(session, msg);
      });
      call.on('error', () => {}); // the same status arrives as 'status'
      call.on('status', (status) => {
        session.closed = true;
        clearInterval(session.ping);
        if (this._session === session) this._session = null;
        for (const task of this._tasks.values()) task.sent = false; // resent after the next welcome
        resolve({ welcomed: session.welcomed, error: status.code === grpc.status.OK ? null : toJobwireError(status) });
      });
      // Every task still here, those taken away too: each holds a slot until this worker closes it.
      const held = [...this._tasks.values()].slice(0, this.slots)
        .map((t) => ({ jobId: t.jobId, attempt: t.attempt, phase: t.phase }));
      session.held = held.length;
      call.write({
        hello: {
          workerId: this.workerId, sdkName: SDK_NAME, sdkVersion: SDK_VERSION,
          kinds: [...this._kinds.values()].map((k) => k._declaration()), queues: this.queues, slots: this.slots, held,
        },
      });
    });
  }

  /** Queues a message on the session; what is queued in one turn of the event loop goes as one batch. */
  _write(session, message) {
    if (!session || session.closed || session.ended) return false;
    session.pending.push(message);
    if (!session.flushing) {
      session.flushing = true;
      setImmediate(() => this._flush(session));
    }
    return true;
  }

  _flush(session) {
    session.flushing = false;
    const messages = session.pending.splice(0);
    if (session.closed) return; // the reports among them are sent again after the next welcome
    for (let i = 0; i < messages.length; i += MAX_BATCH) {
      const chunk = messages.slice(i, i + MAX_BATCH);
      session.call.write(chunk.length === 1 ? chunk[0] : { batch: { messages: chunk } });
    }
  }

  _onMessage(session, msg) {
    switch (msg.message) {
      case 'batch':
        for (const message of msg.batch.messages) this._onMessage(session, message);
        return undefined;
      case 'welcome': return this._onWelcome(session, msg.welcome);
      case 'assign': return this._onAssign(session, msg.assign);
      case 'ack': return this._onAck(msg.ack);
      case 'cancel': return this._onCancel(msg.cancel);
      case 'drain':
        // The server is stopping: no more work on this session; it cancels what is still running after
        // the deadline, then ends the stream, and the worker reconnects.
        session.draining = true;
        return undefined;
      case 'pong': return undefined;
      default: return this.emit('warning', `unexpected message from the server: ${msg.message}`);
    }
  }

  _onWelcome(session, welcome) {
    session.welcomed = true;
    session.maxResultBytes = Number(welcome.maxResultBytes);
    const pingMs = durationToMs(welcome.pingInterval);
    if (pingMs > 0) {
      session.ping = setInterval(() => {
        // A server silent for three intervals is gone: end the call and reconnect.
        if (Date.now() - session.lastHeard > 3 * pingMs) session.call.cancel();
        else this._write(session, { ping: { nonce: String((session.nonce += 1)) } });
      }, pingMs);
    }
    // The server's initial credit: the slots less every job the hello named (kept or dropped, each
    // holds a slot until this worker closes it).
    session.credit = Math.max(0, this.slots - session.held);
    if (this._state === 'draining') this._write(session, { draining: { reason: 'drain' } });
    const kept = new Set(welcome.keepJobIds);
    for (const task of [...this._tasks.values()]) {
      if (!kept.has(task.jobId)) this._takeAway(task, 'the server does not hold this attempt any more');
      this._pump(task); // the report that waited for an ack (or the closing one) is sent again
    }
    this.emit('session', {
      sessionId: welcome.sessionId, leaseTtlMs: durationToMs(welcome.leaseTtl), pingIntervalMs: pingMs,
      kept: [...kept], dropped: [...welcome.dropJobIds],
    });
    this._grantCredit();
  }

  /**
   * Sends credit for free slots the server does not count (it gives a slot back itself with the answer
   * to each job's closing report, so this is rare); it never counts more than the hello's slots.
   */
  _grantCredit() {
    const session = this._session;
    if (!session?.welcomed || session.draining || this._state !== 'running') return;
    const missing = this.slots - this.busy - session.credit;
    if (missing > 0 && this._write(session, { credit: { slots: missing } })) session.credit += missing;
  }

  // -------------------------------------------------------------------------------------------
  // Jobs
  //
  // A task is one assignment (a job's attempt) on this worker. It holds a slot from its assignment until
  // the server answers its closing report: the phase done that ends the job, or `released`. A task the
  // server takes away (fenced, abandoned after a cancel, dropped at a reconnect) is closed the same way
  // once its handler has returned, so a handler that ignores its cancellation keeps its slot until then.

  _onAssign(session, a) {
    session.credit = Math.max(0, session.credit - 1);
    if (session.closed || session.ended) return; // never started: the server takes it back
    const key = taskKey(a.jobId, a.attempt);
    if (this._tasks.has(key)) return;
    const task = {
      key, jobId: a.jobId, attempt: a.attempt, assignment: a, phase: a.phase, results: {},
      controller: null, running: false, outbox: [], awaiting: null, sent: false, cancelReason: null, taken: false,
      reported: false, startedTimer: null,
    };
    for (const done of a.done) task.results[done.name] = done.result;
    this._tasks.set(key, task);
    if (session.draining || this._state !== 'running' || this.busy > this.slots) {
      this._giveBack(task, this.busy > this.slots ? 'no free slot' : 'draining');
      return;
    }
    task.startedTimer = setTimeout(() => this._sayStarted(task), STARTED_AFTER_MS);
    this._startPhase(task);
  }

  /**
   * Acknowledges the hand-off of a phase still running with no report yet (a taken `started` gets no ack).
   * Not after a cancel: the phase is stopping, and its phase done (or the cancel's grace) settles it.
   */
  _sayStarted(task) {
    if (task.reported || task.taken || task.cancelReason !== null || !this._tasks.has(task.key)) return;
    const { jobId, attempt, assignment } = task;
    task.reported = this._write(this._session?.welcomed ? this._session : null, { started: { jobId, attempt, phase: assignment.phase } });
  }

  _startPhase(task) {
    const handler = this._kinds.get(task.assignment.kind)?._phases.get(task.phase);
    if (!handler) {
      const known = this._kinds.has(task.assignment.kind);
      this._phaseDone(task, {
        failure: {
          type: known ? 'UNKNOWN_PHASE' : 'UNKNOWN_KIND', retryable: false, retryAfter: null,
          message: known ? `kind ${task.assignment.kind} has no phase ${task.phase} on this worker`
            : `no handler for kind ${task.assignment.kind} on this worker`,
        },
      });
      return;
    }
    const controller = new AbortController();
    task.controller = controller;
    task.running = true;
    const { phase } = task;
    const context = { signal: controller.signal, phase, progress: (percent, message) => this._progress(task, phase, percent, message) };
    Promise.resolve()
      .then(() => handler(jobView(task), context))
      .then((value) => ({ value }), (error) => ({ error }))
      .then((outcome) => this._phaseEnded(task, phase, controller, outcome));
  }

  _progress(task, phase, percent, message = '') {
    if (!(typeof percent === 'number' && percent >= 0 && percent <= 100)) {
      throw new RangeError(`percent must be within 0-100, got ${percent}`);
    }
    if (task.taken || task.phase !== phase || !task.running) return;
    const sent = this._write(this._session?.welcomed ? this._session : null, {
      progress: { jobId: task.jobId, attempt: task.attempt, phase, percent, message: String(message).slice(0, MAX_PROGRESS_MESSAGE) },
    });
    task.reported ||= sent;
  }

  _phaseEnded(task, phase, controller, { value, error }) {
    task.running = false;
    if (task.taken) {
      this._giveBack(task, 'taken back by the server');
      return;
    }
    if (error !== undefined) {
      if (task.cancelReason !== null) this._phaseDone(task, { cancelled: true });
      else if (controller.signal.reason?.why === 'drain') this._giveBack(task, 'worker draining');
      else this._phaseDone(task, { failure: failureOf(error) });
      return;
    }
    let result;
    try {
      result = encodeResult(value);
    } catch (err) {
      this._phaseDone(task, { failure: failureOf(err) });
      return;
    }
    const limit = this._session?.maxResultBytes ?? 0;
    if (limit > 0 && result.length > limit) {
      this._phaseDone(task, { failure: tooLarge(phase, result.length, limit) });
      return;
    }
    this._phaseDone(task, { result });
  }

  _phaseDone(task, outcome) {
    this._report(task, { phaseDone: { jobId: task.jobId, attempt: task.attempt, phase: task.phase, ...outcome } });
  }

  _giveBack(task, reason) {
    this._report(task, { released: { jobId: task.jobId, attempt: task.attempt, reason } });
  }

  /**
   * Queues a report that the server always answers (phase done, released); one is in flight per task,
   * so an ack answers the one awaited. A report still unanswered is sent again after a reconnect.
   */
  _report(task, report) {
    task.outbox.push(report);
    this._pump(task);
  }

  _pump(task) {
    if (!task.awaiting) task.awaiting = task.outbox.shift() ?? null;
    if (!task.awaiting || task.sent) return;
    const session = this._session?.welcomed ? this._session : null;
    const message = task.awaiting.phaseDone ? { phaseDone: wire(task.awaiting.phaseDone) } : task.awaiting;
    task.sent = this._write(session, message);
    task.reported ||= task.sent;
  }

  _onAck(ack) {
    const task = this._tasks.get(taskKey(ack.jobId, ack.attempt));
    if (!task) return; // a duplicate answer, after the task was closed
    const report = task.awaiting;
    if ((!report || !task.sent) && ack.status === 'ACK_STATUS_OK') return; // nothing awaited it
    if (!report || !task.sent) {
      // A started or progress report was not taken: the job is not this worker's any more (or the two
      // disagree about it). Stop, then close the task.
      if (ack.status === 'ACK_STATUS_REJECTED') {
        this.emit('warning', `job ${task.jobId}: the server rejected a report (${ack.reason}: ${ack.detail})`);
      }
      this._takeAway(task, `${ack.status.replace('ACK_STATUS_', '').toLowerCase()} (${ack.reason || 'no reason'})`);
      this._pump(task);
      return;
    }
    task.awaiting = null;
    task.sent = false;
    if (ack.status === 'ACK_STATUS_REJECTED') this._rejected(task, report, ack);
    else if (ack.status === 'ACK_STATUS_OK' && report.phaseDone && ack.nextPhase && !task.taken) this._nextPhase(task, report.phaseDone, ack.nextPhase);
    else this._close(task);
    this._pump(task);
  }

  _rejected(task, report, ack) {
    const done = report.phaseDone;
    if (done?.result && ack.reason === 'RESULT_TOO_LARGE') {
      task.outbox.unshift({ phaseDone: { ...done, result: undefined, failure: tooLarge(done.phase, done.result.length, 0) } });
      return;
    }
    // Nothing was written: give the job back rather than leave it leased.
    this.emit('warning', `job ${task.jobId}: the server rejected a report (${ack.reason}: ${ack.detail}); giving the job back`);
    this._giveBack(task, `report refused: ${ack.reason}`);
  }

  _nextPhase(task, done, nextPhase) {
    if (done.result) task.results[done.phase] = done.result;
    task.phase = nextPhase;
    if (task.cancelReason !== null) this._phaseDone(task, { cancelled: true });
    else if (this._drainDeadlinePassed) this._giveBack(task, 'worker draining');
    else this._startPhase(task);
  }

  _onCancel(cancel) {
    const task = this._tasks.get(taskKey(cancel.jobId, cancel.attempt));
    if (!task || task.taken || task.cancelReason !== null) return;
    task.cancelReason = cancel.reason;
    if (!task.running) return; // between phases: the phase done's answer decides
    const { controller } = task;
    controller.abort(abortReason('cancel', `stopped by the server: ${cancel.reason || 'cancelled'}`));
    // After the grace the server finishes the job without this handler; it keeps its slot until it returns.
    const graceMs = durationToMs(cancel.grace);
    setTimeout(() => {
      if (task.running && task.controller === controller) {
        this.emit('warning', `job ${task.jobId}: the handler of phase ${task.phase} ignored its cancellation for `
          + `${graceMs} ms; the server finishes the job without it, and it keeps its slot until it returns`);
      }
    }, graceMs).unref();
  }

  /** The server took the job away: stop its handler; the task is closed with `released` once it returned. */
  _takeAway(task, why) {
    if (task.taken) return;
    task.taken = true;
    task.outbox.length = 0;
    if (task.running) {
      task.controller.abort(abortReason('lost', `the attempt is not this worker's any more: ${why}`));
    } else if (!task.awaiting) {
      this._giveBack(task, 'taken back by the server');
    }
  }

  /** The server answered the task's closing report: the job is over and its slot free, here and there. */
  _close(task) {
    if (!this._tasks.delete(task.key)) return;
    task.outbox.length = 0;
    clearTimeout(task.startedTimer);
    if (this._session) this._session.credit += 1;
    this._grantCredit();
    this._checkDrained();
  }

  // -------------------------------------------------------------------------------------------
  // Draining and stopping

  _drained() {
    return this._state === 'draining' && this._tasks.size === 0;
  }

  _checkDrained() {
    if (!this._drained()) return;
    this._state = 'stopped';
    this._wake?.();
    const session = this._session;
    if (session && !session.closed && !session.ended) {
      // Half-close: the server ends the session; nothing more is written on it.
      this._flush(session);
      session.ended = true;
      clearInterval(session.ping);
      session.call.end();
      setTimeout(() => session.closed || session.call.cancel(), CLOSE_WAIT_MS).unref();
    }
  }

  _drainDeadline() {
    this._drainDeadlinePassed = true;
    // Without a session nothing can be given back: the jobs' leases run out and the server requeues them.
    if (!this._session?.welcomed) this._abandonAll();
    for (const task of this._tasks.values()) {
      if (task.running) task.controller.abort(abortReason('drain', 'the worker is draining'));
    }
    this._timers.add(setTimeout(() => this._abandonAll(), RELEASE_GRACE_MS));
  }

  /** Stops every task without closing it (the worker is stopping): their leases run out on the server. */
  _abandonAll() {
    for (const task of this._tasks.values()) {
      clearTimeout(task.startedTimer);
      if (task.running && !task.controller.signal.aborted) task.controller.abort(abortReason('lost', 'the worker stopped'));
    }
    this._tasks.clear();
    this._checkDrained();
  }
}

const taskKey = (jobId, attempt) => `${jobId}#${attempt}`;
