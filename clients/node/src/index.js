// @jobwire/client: a small Node.js client for jobwire.v1.JobService, and a worker for WorkerService
// (src/worker.js).
//
// The contract is loaded at runtime with @grpc/proto-loader from proto/jobwire/v1/ (jobwire.proto and
// worker.proto): the copy packed into the package, or the repository's own, so the client speaks
// exactly that contract.
//
// Message objects use proto-loader's conventions: camelCase field names, enums as their names
// (e.g. "JOB_STATE_QUEUED"), 64-bit integers as decimal strings (e.g. `sequence`, `lastSequence`),
// bytes as Buffers, Timestamps/Durations as `{seconds: string, nanos: number}`, unset message
// fields as null and unset scalars as their defaults.

import * as grpc from '@grpc/grpc-js';

import { JobwireError, toJobwireError } from './errors.js';
import { bearerMetadata, channelCredentials, loadService } from './transport.js';

export { JobwireError, decodeStatusDetails } from './errors.js';
export { DEFAULT_PROTO_DIR } from './transport.js';
export {
  DEFAULT_RECONNECT, DEFAULT_SLOTS, Kind, PermanentError, RetryableError, Worker,
} from './worker.js';

// ---------------------------------------------------------------------------------------------
// Request conversion

function toPayload(payload) {
  if (payload === undefined || payload === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(payload)) return payload;
  if (payload instanceof Uint8Array) return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (typeof payload === 'string') return Buffer.from(payload, 'utf8');
  return Buffer.from(JSON.stringify(payload), 'utf8');
}

function toDuration(seconds, name) {
  if (seconds === undefined || seconds === null) return null;
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) throw new TypeError(`${name} must be a finite number of seconds`);
  // Keep the sign on both parts, as google.protobuf.Duration requires.
  const whole = Math.trunc(seconds);
  const nanos = Math.round((seconds - whole) * 1e9);
  return { seconds: String(whole), nanos };
}

function toTimestamp(value, name = 'runAt') {
  if (value === undefined || value === null) return null;
  if (typeof value === 'object' && !(value instanceof Date) && 'seconds' in value) {
    return { seconds: String(value.seconds), nanos: value.nanos ?? 0 };
  }
  const ms = value instanceof Date ? value.getTime() : typeof value === 'number' ? value : Date.parse(value);
  if (!Number.isFinite(ms)) throw new TypeError(`${name} must be a Date, epoch milliseconds, an ISO string or {seconds, nanos}`);
  const secs = Math.floor(ms / 1000);
  return { seconds: String(secs), nanos: Math.round((ms - secs * 1000) * 1e6) };
}

function policy(prefix, value) {
  if (value === undefined || value === null || value === '') return `${prefix}UNSPECIFIED`;
  const name = String(value).toUpperCase().replace(/-/g, '_');
  return name.startsWith(prefix) ? name : prefix + name;
}

/** A schedule spec as the client takes it (flat, like `enqueue`'s options plus the timing) -> ScheduleSpec. */
function toScheduleSpec({
  kind, payload, queue, priority, maxAttempts, timeoutSeconds, labels, dedupeKey, webhook, concurrencyKey,
  cron, timeZone, intervalSeconds, jitterSeconds, overlapPolicy, catchupPolicy, description,
} = {}) {
  const spec = {
    template: {
      kind: kind ?? '',
      queue: queue ?? '',
      payload: toPayload(payload),
      priority: priority ?? 0,
      maxAttempts: maxAttempts ?? 0,
      timeout: toDuration(timeoutSeconds, 'timeoutSeconds'),
      dedupeKey: dedupeKey ?? '',
      labels: labels ?? {},
      webhook: webhook ? { url: webhook.url, events: webhook.events ?? [] } : null,
      concurrencyKey: concurrencyKey ?? '',
    },
    timeZone: timeZone ?? '',
    jitter: toDuration(jitterSeconds, 'jitterSeconds'),
    overlapPolicy: policy('OVERLAP_POLICY_', overlapPolicy),
    catchupPolicy: policy('CATCHUP_POLICY_', catchupPolicy),
    description: description ?? '',
  };
  // One field of the `timing` oneof; a spec with neither (or both) is sent for the server to refuse.
  if (intervalSeconds !== undefined && intervalSeconds !== null) spec.interval = toDuration(intervalSeconds, 'intervalSeconds');
  if (cron !== undefined && cron !== null) spec.cron = cron;
  return spec;
}

const STATE_PREFIX = 'JOB_STATE_';

/**
 * The filter fields ListJobsRequest and JobFilter share, from `{queue, kind, states, labels, labelKeys,
 * labelIn, createdAfter, createdBefore, finishedAfter, finishedBefore}`. States may be given with or
 * without their prefix ('FAILED' or 'JOB_STATE_FAILED'); `labelIn` maps a key to the values any of which
 * matches (`{env: ['prod', 'staging']}`); times are as for `enqueue`'s `runAt`.
 */
function toJobFilter({
  queue, kind, states, labels, labelKeys, labelIn, createdAfter, createdBefore, finishedAfter, finishedBefore,
} = {}) {
  return {
    queue: queue ?? '',
    kind: kind ?? '',
    states: (states ?? []).map((s) => (String(s).toUpperCase().startsWith(STATE_PREFIX) ? String(s).toUpperCase()
      : STATE_PREFIX + String(s).toUpperCase())),
    labels: labels ?? {},
    labelKeys: labelKeys ?? [],
    labelIn: Object.fromEntries(Object.entries(labelIn ?? {}).map(([key, values]) => [
      key, { values: Array.isArray(values) ? values.map(String) : [String(values)] }])),
    createdAfter: toTimestamp(createdAfter, 'createdAfter'),
    createdBefore: toTimestamp(createdBefore, 'createdBefore'),
    finishedAfter: toTimestamp(finishedAfter, 'finishedAfter'),
    finishedBefore: toTimestamp(finishedBefore, 'finishedBefore'),
  };
}

/** A CancelJobs / RetryJobs response as plain numbers: `{matched, changed, cancelRequested, skipped, dryRun}`. */
function toBulkResult(res) {
  const skipped = {};
  for (const entry of res.skipped ?? []) skipped[String(entry.reason).replace(/^SKIP_REASON_/, '')] = Number(entry.count);
  return {
    matched: Number(res.matched),
    changed: Number(res.changed),
    cancelRequested: Number(res.cancelRequested ?? 0),
    skipped,
    dryRun: Boolean(res.dryRun),
  };
}

/** Converts a proto Timestamp ({seconds, nanos}) to a Date; null when unset. */
export function timestampToDate(ts) {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6));
}

// ---------------------------------------------------------------------------------------------
// Client

/**
 * Client of jobwire.v1.JobService.
 *
 * `new JobwireClient('127.0.0.1:50051', {token, tls})`:
 *   - `token`: bearer token, sent as `authorization: Bearer <token>` on every call.
 *   - `tls`: false/undefined for plaintext; true for TLS with the system roots; or
 *     `{rootCerts, privateKey, certChain}` (Buffers) for a custom CA and/or mutual TLS.
 *   - `timeoutMs`: optional deadline applied to every unary call.
 *   - `channelOptions`: extra grpc-js channel options.
 *   - `protoDir`: folder holding jobwire/v1/jobwire.proto (defaults to DEFAULT_PROTO_DIR).
 *   - `retry`: how `watch` resumes a stream the server ended with a status a client retries (see
 *     DEFAULT_RETRY and `watch`); `{maxAttempts: 1}` turns resuming off.
 */
export class JobwireClient {
  constructor(target, { token, tls, timeoutMs, channelOptions, protoDir, retry } = {}) {
    if (!target) throw new TypeError('target is required, e.g. "127.0.0.1:50051"');
    const Service = loadService(protoDir, 'JobService');
    this._token = token ?? null;
    this._timeoutMs = timeoutMs ?? null;
    this._closed = false;
    this._retry = retryPolicy(retry);
    this._stub = new Service(target, channelCredentials(tls), channelOptions ?? {});
  }

  _metadata() {
    return bearerMetadata(this._token);
  }

  _callOptions() {
    return this._timeoutMs ? { deadline: Date.now() + this._timeoutMs } : {};
  }

  _unary(method, request) {
    return new Promise((resolve, reject) => {
      this._stub[method](request, this._metadata(), this._callOptions(), (err, response) => {
        if (err) reject(toJobwireError(err));
        else resolve(response);
      });
    });
  }

  /**
   * Resolves once the channel is connected (trying to connect meanwhile); rejects with a
   * JobwireError (UNAVAILABLE) after `timeoutMs`, or at once when the client is closed.
   */
  waitForReady(timeoutMs = 20000) {
    const channel = this._stub.getChannel();
    const deadline = Date.now() + timeoutMs;
    const { READY, SHUTDOWN } = grpc.connectivityState;
    return new Promise((resolve, reject) => {
      const fail = (details) => reject(new JobwireError({ code: grpc.status.UNAVAILABLE, details }));
      const check = () => {
        if (this._closed) return fail('client closed');
        const state = channel.getConnectivityState(true);
        if (state === READY) return resolve();
        if (state === SHUTDOWN) return fail('channel shut down');
        if (Date.now() >= deadline) return fail(`not connected to ${channel.getTarget()} within ${timeoutMs} ms`);
        // Short slices, so that close() is noticed promptly.
        return channel.watchConnectivityState(state, Math.min(deadline, Date.now() + 250), check);
      };
      check();
    });
  }

  /**
   * Creates a job. `payload` may be a Buffer/Uint8Array (sent as is), a string (UTF-8) or any other
   * value (sent as JSON). Resolves to `{job, deduplicated}`.
   */
  async enqueue(kind, {
    payload, queue, priority, delaySeconds, runAt, maxAttempts, timeoutSeconds, labels, dedupeKey, requestId, webhook,
    concurrencyKey,
  } = {}) {
    const request = {
      kind,
      queue: queue ?? '',
      payload: toPayload(payload),
      priority: priority ?? 0,
      runAt: toTimestamp(runAt),
      delay: toDuration(delaySeconds, 'delaySeconds'),
      maxAttempts: maxAttempts ?? 0,
      timeout: toDuration(timeoutSeconds, 'timeoutSeconds'),
      dedupeKey: dedupeKey ?? '',
      requestId: requestId ?? '',
      labels: labels ?? {},
      webhook: webhook ? { url: webhook.url, events: webhook.events ?? [] } : null,
      concurrencyKey: concurrencyKey ?? '',
    };
    const res = await this._unary('Enqueue', request);
    return { job: res.job, deduplicated: res.deduplicated };
  }

  /** Returns the job as it is now. */
  get(id) {
    return this._unary('GetJob', { id });
  }

  /** Cancels a job; resolves to the job after the change (may still be RUNNING, see the proto). */
  cancel(id, reason = '') {
    return this._unary('CancelJob', { id, reason: reason ?? '' });
  }

  /** Puts a finished job back in the queue; resolves to the job after the change. */
  retry(id, { fromStart = false } = {}) {
    return this._unary('RetryJob', { id, fromStart: Boolean(fromStart) });
  }

  /**
   * One page of the jobs matching every filter given (see toJobFilter for the filter's fields), newest
   * first. Resolves to `{jobs, nextPageToken}`; pass `pageToken: nextPageToken` (with the same filter)
   * for the next page, until it is ''.
   */
  async listJobs(filter = {}, { pageSize = 0, pageToken = '' } = {}) {
    const res = await this._unary('ListJobs', { ...toJobFilter(filter), pageSize, pageToken });
    return { jobs: res.jobs, nextPageToken: res.nextPageToken };
  }

  /**
   * Cancels every job the filter matches, as `cancel` does each one, in batches the server commits one
   * by one; with `dryRun` only counts them. A filter with no criteria is refused (INVALID_ARGUMENT)
   * unless `all` is true; more than one match needs the admin scope (PERMISSION_DENIED). Resolves to
   * `{matched, changed, cancelRequested, skipped: {REASON: count}, dryRun}`.
   */
  async cancelJobs(filter = {}, { all = false, dryRun = false, reason = '' } = {}) {
    const request = { filter: toJobFilter(filter), all: Boolean(all), dryRun: Boolean(dryRun), reason: reason ?? '' };
    return toBulkResult(await this._unary('CancelJobs', request));
  }

  /**
   * Puts every finished job the filter matches back in the queue, as `retry` does each one; with
   * `dryRun` only counts them. `all`, scope and result as in `cancelJobs`.
   */
  async retryJobs(filter = {}, { all = false, dryRun = false, fromStart = false } = {}) {
    const request = { filter: toJobFilter(filter), all: Boolean(all), dryRun: Boolean(dryRun), fromStart: Boolean(fromStart) };
    return toBulkResult(await this._unary('RetryJobs', request));
  }

  /**
   * Streams one job's events as an async iterator of JobEvent objects. It ends when the server
   * ends the stream (after the terminal event). Breaking out of a `for await` loop (or calling
   * `.cancel()`) cancels the call.
   *
   * A stream the server ends with a status a client retries is opened again after the last
   * `sequence` received, so no event is lost or repeated: UNAVAILABLE (server restarting, draining
   * or unreachable) and RESOURCE_EXHAUSTED with reason TOO_MANY_STREAMS (the server's watch limit)
   * after the retry policy's backoff, RESOURCE_EXHAUSTED with reason WATCH_TOO_SLOW (this reader
   * fell behind) at once. `retry.maxAttempts` bounds the tries in a row that receive no event;
   * then, or for any other status, the iterator throws the JobwireError. `onRetry(error, attempt,
   * delayMs)` is called before each new try.
   */
  watch(id, { afterSequence = 0, retry, onRetry } = {}) {
    const policy = retry === undefined ? this._retry : retryPolicy(retry);
    const open = (after) => new EventStream(this._stub.WatchJob({ id, afterSequence: String(after) }, this._metadata()));
    return new ResumingEventStream(open, BigInt(afterSequence), policy, onRetry ?? null);
  }

  // -------------------------------------------------------------------------------------------
  // Schedules: writes need the `schedules:write` scope, reads `jobs:read`.

  /**
   * Creates schedule `id`: a job template and exactly one of `cron` (read in `timeZone`, UTC by
   * default) and `intervalSeconds`. Resolves to the Schedule (with its `nextFireTimes`).
   */
  createSchedule(id, spec, { paused = false } = {}) {
    return this._unary('CreateSchedule', { id, spec: toScheduleSpec(spec), paused: Boolean(paused) });
  }

  /** Resolves to the schedule with its next firing times. */
  getSchedule(id) {
    return this._unary('GetSchedule', { id });
  }

  /** One page of schedules by id: `{schedules, nextPageToken}` ("" on the last page). */
  async listSchedules({ pageSize = 0, pageToken = '' } = {}) {
    const res = await this._unary('ListSchedules', { pageSize, pageToken });
    return { schedules: res.schedules, nextPageToken: res.nextPageToken };
  }

  /** Replaces the schedule's spec (its paused state and last firing are kept). */
  updateSchedule(id, spec) {
    return this._unary('UpdateSchedule', { id, spec: toScheduleSpec(spec) });
  }

  /** Deletes the schedule; the jobs it enqueued are left alone. */
  async deleteSchedule(id) {
    await this._unary('DeleteSchedule', { id });
  }

  /** Stops the schedule's firings until it is resumed. */
  pauseSchedule(id) {
    return this._unary('PauseSchedule', { id });
  }

  /** Fires again from the first time after now (what fell while paused is not made up). */
  resumeSchedule(id) {
    return this._unary('ResumeSchedule', { id });
  }

  /**
   * Fires the schedule once now, paused or not, under its overlap policy. Resolves to
   * `{job, skipped}`: the job enqueued, or with `skipped` the previous firing's job, still active.
   * A `requestId` makes a retried call return the job the first call enqueued.
   */
  async triggerSchedule(id, { requestId = '' } = {}) {
    const res = await this._unary('TriggerSchedule', { id, requestId });
    return { job: res.job, skipped: res.skipped };
  }

  // -------------------------------------------------------------------------------------------
  // Queues: changes need the `queues:write` scope, reads `jobs:read`. Settings are kept in the
  // server's database and hold on every replica.

  /** Starts nothing more from the queue until it is resumed (it still takes enqueues). Resolves to the Queue. */
  pauseQueue(name) {
    return this._unary('PauseQueue', { name });
  }

  /** Lets a paused queue start jobs again. */
  resumeQueue(name) {
    return this._unary('ResumeQueue', { name });
  }

  /** The queue's settings and counts; NOT_FOUND (QUEUE_NOT_FOUND) when it has neither settings nor jobs. */
  getQueue(name) {
    return this._unary('GetQueue', { name });
  }

  /** One page of queues by name: `{queues, nextPageToken}` ("" on the last page). */
  async listQueues({ pageSize = 0, pageToken = '' } = {}) {
    const res = await this._unary('ListQueues', { pageSize, pageToken });
    return { queues: res.queues, nextPageToken: res.nextPageToken };
  }

  /**
   * Changes the settings given and keeps the others (0 removes a limit or a default):
   * `{concurrencyLimit, rateLimit, rateBurst, keyLimit, defaultPriority, defaultMaxAttempts}`.
   * `rateLimit` is jobs started per second, `rateBurst` how many may start at once.
   */
  updateQueue(name, settings = {}) {
    const request = { name };
    for (const field of QUEUE_SETTINGS) {
      const value = settings[field];
      if (value === undefined || value === null) continue;
      if (typeof value !== 'number' || !Number.isFinite(value)) throw new TypeError(`${field} must be a finite number`);
      request[field] = value;  // proto3 optional: a field given (0 too) is sent and written
    }
    return this._unary('UpdateQueue', request);
  }

  /** Closes the channel. Calls still in flight are cancelled. */
  close() {
    this._closed = true;
    this._stub.close();
  }
}

const QUEUE_SETTINGS = Object.freeze(['concurrencyLimit', 'rateLimit', 'rateBurst', 'keyLimit', 'defaultPriority',
  'defaultMaxAttempts']);

/** How `watch` retries by default: 5 tries in a row without an event, backoff 100 ms doubling to 2 s. */
export const DEFAULT_RETRY = Object.freeze({ maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 2000, multiplier: 2 });

function retryPolicy(retry) {
  const policy = { ...DEFAULT_RETRY, ...(retry ?? {}) };
  const { maxAttempts, initialBackoffMs, maxBackoffMs, multiplier } = policy;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) throw new TypeError('retry.maxAttempts must be an integer >= 1');
  if (!(initialBackoffMs >= 0) || !(maxBackoffMs >= 0) || !(multiplier >= 1)) {
    throw new TypeError('retry backoffs must be >= 0 and retry.multiplier >= 1');
  }
  return Object.freeze(policy);
}

/** Milliseconds to wait before retry number `retry` (0-based), randomised down by up to half (jitter). */
function backoffMs(policy, retry) {
  const ceiling = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** retry);
  return ceiling * (0.5 + Math.random() / 2);
}

const RESUMED_AT_ONCE = 'WATCH_TOO_SLOW';
const RESUMED_AFTER_BACKOFF = 'TOO_MANY_STREAMS';

/** When a failed watch is tried again: 'backoff', 'now', or null (never: the error is thrown). */
function resumption(err) {
  if (err.code === grpc.status.UNAVAILABLE) return 'backoff';
  if (err.code !== grpc.status.RESOURCE_EXHAUSTED) return null;
  if (err.reason === RESUMED_AFTER_BACKOFF) return 'backoff';
  return err.reason === RESUMED_AT_ONCE ? 'now' : null;
}

/** The iterator `watch` returns: one EventStream after another, each resuming after the last sequence. */
class ResumingEventStream {
  constructor(open, afterSequence, policy, onRetry) {
    this._open = open;
    this._last = afterSequence;
    this._policy = policy;
    this._onRetry = onRetry;
    this._failures = 0;
    this._current = open(afterSequence); // the first call starts at once, as a plain stream would
    this._done = false;
    this._wake = null; // ends the backoff wait early when cancelled
  }

  async next() {
    while (!this._done) {
      this._current ??= this._open(this._last);
      let result;
      try {
        result = await this._current.next();
      } catch (err) {
        this._current = null;
        if (this._done) break;
        const when = resumption(err);
        if (when === null || this._failures + 1 >= this._policy.maxAttempts) {
          this._done = true;
          throw err;
        }
        const delayMs = when === 'backoff' ? backoffMs(this._policy, this._failures) : 0;
        this._failures += 1;
        this._onRetry?.(err, this._failures, delayMs);
        if (delayMs > 0) await this._pause(delayMs);
        continue;
      }
      if (result.done) {
        this._done = true;
        break;
      }
      const sequence = BigInt(result.value.sequence);
      if (sequence > this._last) this._last = sequence;
      this._failures = 0;
      return result;
    }
    return { value: undefined, done: true };
  }

  _pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this._wake = null;
        resolve();
      }, ms);
      this._wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Stops the stream (cancels the call, or the wait before the next try). */
  cancel() {
    if (this._done) return;
    this._done = true;
    this._current?.cancel();
    this._wake?.();
  }

  async return(value) {
    this.cancel();
    return { value, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

const HIGH_WATER = 64;

/** Async iterator over a grpc-js server stream, with backpressure and errors as JobwireError. */
class EventStream {
  constructor(call) {
    this._call = call;
    this._queue = [];
    this._waiters = [];
    this._status = null; // final status once known
    this._ended = false; // 'end' seen: every message has been delivered
    this._done = false;
    this._cancelled = false;
    call.on('data', (msg) => {
      this._queue.push(msg);
      if (this._queue.length >= HIGH_WATER) call.pause();
      this._flush();
    });
    call.on('error', (err) => {
      this._status ??= err;
      this._flush();
    });
    call.on('status', (st) => {
      this._status ??= st;
      this._flush();
    });
    call.on('end', () => {
      this._ended = true;
      this._flush();
    });
  }

  _finished() {
    // The final status arrives right after the last message was pushed into the stream; the
    // stream is over once that status is known and every pushed message has been delivered.
    return this._status !== null && (this._ended || this._call.readableLength === 0);
  }

  _flush() {
    while (this._waiters.length > 0) {
      const w = this._waiters[0];
      if (this._queue.length > 0) {
        this._waiters.shift();
        w.resolve({ value: this._queue.shift(), done: false });
        if (this._queue.length < HIGH_WATER / 2 && this._call.isPaused()) this._call.resume();
      } else if (this._done || this._finished()) {
        this._waiters.shift();
        const failed = !this._done && !this._cancelled && this._status.code !== grpc.status.OK;
        this._done = true;
        if (failed) w.reject(toJobwireError(this._status));
        else w.resolve({ value: undefined, done: true });
      } else {
        return;
      }
    }
  }

  next() {
    return new Promise((resolve, reject) => {
      this._waiters.push({ resolve, reject });
      this._flush();
    });
  }

  /** Stops the stream (cancels the call). */
  cancel() {
    if (!this._done) {
      this._cancelled = true;
      this._done = true;
      this._queue.length = 0;
      this._call.cancel();
      this._flush();
    }
  }

  async return(value) {
    this.cancel();
    return { value, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

export { grpc };
export default JobwireClient;
