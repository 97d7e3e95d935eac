// Type declarations for @jobwire/client (hand-written; message shapes follow proto-loader's output:
// camelCase fields, enums as names, 64-bit integers as decimal strings, bytes as Buffers).

import type * as grpcNs from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';

export const grpc: typeof grpcNs;
export const DEFAULT_PROTO_DIR: string;

export type JobState =
  | 'JOB_STATE_UNSPECIFIED' | 'JOB_STATE_SCHEDULED' | 'JOB_STATE_QUEUED' | 'JOB_STATE_RUNNING'
  | 'JOB_STATE_RETRYING' | 'JOB_STATE_SUCCEEDED' | 'JOB_STATE_FAILED' | 'JOB_STATE_CANCELLED'
  | 'JOB_STATE_STALE';

export type PhaseState =
  | 'PHASE_STATE_UNSPECIFIED' | 'PHASE_STATE_PENDING' | 'PHASE_STATE_RUNNING'
  | 'PHASE_STATE_SUCCEEDED' | 'PHASE_STATE_FAILED' | 'PHASE_STATE_CANCELLED';

export type EventType =
  | 'EVENT_TYPE_UNSPECIFIED' | 'EVENT_TYPE_SNAPSHOT' | 'EVENT_TYPE_ENQUEUED' | 'EVENT_TYPE_STARTED'
  | 'EVENT_TYPE_PHASE_STARTED' | 'EVENT_TYPE_PROGRESS' | 'EVENT_TYPE_PHASE_SUCCEEDED'
  | 'EVENT_TYPE_PHASE_FAILED' | 'EVENT_TYPE_RETRY_SCHEDULED' | 'EVENT_TYPE_SUCCEEDED'
  | 'EVENT_TYPE_FAILED' | 'EVENT_TYPE_CANCEL_REQUESTED' | 'EVENT_TYPE_CANCELLED'
  | 'EVENT_TYPE_INTERRUPTED' | 'EVENT_TYPE_STALE' | 'EVENT_TYPE_DELETED'
  | 'EVENT_TYPE_WEBHOOK_DELIVERED' | 'EVENT_TYPE_WEBHOOK_FAILED' | 'EVENT_TYPE_QUEUED';

/** google.protobuf.Timestamp / Duration as proto-loader returns them. */
export interface Timestamp { seconds: string; nanos: number }
export type Duration = Timestamp;

export interface Progress { percent: number; message: string }

export interface JobError {
  message: string;
  type: string;
  retryable: boolean;
  phase: string;
  attempt: number;
  interrupted: boolean;
  time: Timestamp | null;
}

export interface Phase {
  name: string;
  state: PhaseState;
  progress: Progress | null;
  result: Buffer;
  error: JobError | null;
  startTime: Timestamp | null;
  finishTime: Timestamp | null;
}

export interface WebhookConfig { url: string; events?: EventType[] }

export interface Job {
  id: string;
  queue: string;
  kind: string;
  payload: Buffer;
  priority: number;
  state: JobState;
  attempt: number;
  maxAttempts: number;
  phases: Phase[];
  progress: Progress | null;
  result: Buffer;
  error: JobError | null;
  errorHistory: JobError[];
  dedupeKey: string;
  labels: Record<string, string>;
  webhook: Required<WebhookConfig> | null;
  cancelRequested: boolean;
  cancelReason: string;
  createTime: Timestamp | null;
  updateTime: Timestamp | null;
  runAt: Timestamp | null;
  startTime: Timestamp | null;
  finishTime: Timestamp | null;
  /** uint64 as a decimal string. */
  lastSequence: string;
  timeout: Duration | null;
  countedAttempts: number;
  /** Empty when the job has none. */
  concurrencyKey: string;
  /** Why a QUEUED job waits, as `get` reads it; WAITING_REASON_UNSPECIFIED elsewhere. */
  waitingReason: WaitingReason;
}

export type WaitingReason =
  | 'WAITING_REASON_UNSPECIFIED'
  | 'WAITING_REASON_NONE'
  | 'WAITING_REASON_QUEUE_PAUSED'
  | 'WAITING_REASON_QUEUE_CONCURRENCY'
  | 'WAITING_REASON_CONCURRENCY_KEY'
  | 'WAITING_REASON_RATE_LIMIT';

/** A queue's stored controls; 0 means no limit (or no default). */
export interface QueueSettings {
  paused: boolean;
  concurrencyLimit: number;
  /** Jobs started per second (a token bucket). */
  rateLimit: number;
  rateBurst: number;
  keyLimit: number;
  defaultPriority: number;
  defaultMaxAttempts: number;
}

/** What `updateQueue` changes: each setting given is written (0 removes it), the others are kept. */
export type QueueSettingsInput = Partial<Omit<QueueSettings, 'paused'>>;

export interface QueueStats {
  queue: string;
  /** int64 counts as decimal strings. */
  scheduled: string;
  queued: string;
  running: string;
  retrying: string;
  succeeded: string;
  failed: string;
  cancelled: string;
  stale: string;
  oldestQueuedAge: Duration | null;
  paused: boolean;
  settings: QueueSettings | null;
}

export interface Queue {
  name: string;
  settings: QueueSettings | null;
  stats: QueueStats | null;
  /** The answering server's `--queue-concurrency` limit for the queue (0: none). */
  replicaConcurrencyLimit: number;
  replicaLimitGlobal: boolean;
  /** Unset when the queue has no settings. */
  updateTime: Timestamp | null;
}

export interface JobEvent {
  jobId: string;
  /** uint64 as a decimal string; compare with BigInt(). */
  sequence: string;
  type: EventType;
  time: Timestamp | null;
  phase: string;
  /** Null on DELETED. */
  job: Job | null;
  detail: string;
}

export interface TlsOptions {
  rootCerts?: Buffer | null;
  privateKey?: Buffer | null;
  certChain?: Buffer | null;
}

export interface ClientOptions {
  /** Bearer token sent as `authorization: Bearer <token>`. */
  token?: string;
  /** false/undefined: plaintext; true: TLS with system roots; object: custom CA and/or mTLS. */
  tls?: boolean | TlsOptions;
  /** Deadline applied to every unary call, in milliseconds. */
  timeoutMs?: number;
  channelOptions?: grpcNs.ChannelOptions;
  /** Folder holding jobwire/v1/jobwire.proto; defaults to the repository's proto/ folder. */
  protoDir?: string;
  /** How `watch` resumes a stream the server ended with a retryable status; defaults to DEFAULT_RETRY. */
  retry?: RetryPolicy;
}

/**
 * How a watch is resumed. `maxAttempts` bounds the tries in a row that receive no event (1: never
 * resume); the wait before retry n (0-based) is min(maxBackoffMs, initialBackoffMs * multiplier ** n),
 * randomised down by up to half.
 */
export interface RetryPolicy {
  maxAttempts?: number;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  multiplier?: number;
}

export const DEFAULT_RETRY: Readonly<Required<RetryPolicy>>;

export interface WatchOptions {
  /** 0 (default): start with a SNAPSHOT; n > 0: replay the stored events after sequence n first. */
  afterSequence?: number | string | bigint;
  /** Overrides the client's retry policy for this watch. */
  retry?: RetryPolicy;
  /** Called before each new try, with the error that ended the stream, the try's number and its delay. */
  onRetry?: (error: JobwireError, attempt: number, delayMs: number) => void;
}

export interface EnqueueOptions {
  /** Buffer/Uint8Array sent as is, string as UTF-8, anything else as JSON. */
  payload?: Buffer | Uint8Array | string | unknown;
  queue?: string;
  priority?: number;
  delaySeconds?: number;
  runAt?: Date | number | string | Timestamp;
  maxAttempts?: number;
  timeoutSeconds?: number;
  labels?: Record<string, string>;
  dedupeKey?: string;
  requestId?: string;
  webhook?: WebhookConfig;
  /** With the queue's `keyLimit`, at most that many jobs with this key run at once. */
  concurrencyKey?: string;
}

export type OverlapPolicy =
  | 'OVERLAP_POLICY_UNSPECIFIED' | 'OVERLAP_POLICY_ALLOW' | 'OVERLAP_POLICY_SKIP' | 'OVERLAP_POLICY_CANCEL_PREVIOUS';
export type CatchupPolicy = 'CATCHUP_POLICY_UNSPECIFIED' | 'CATCHUP_POLICY_SKIP' | 'CATCHUP_POLICY_RUN_ONCE';

/**
 * What a schedule does and when: the job template (as `enqueue`'s options) and exactly one of `cron`
 * (read in `timeZone`, UTC by default) and `intervalSeconds`. Policies may be given as their short
 * names ('skip', 'cancel-previous', 'run-once').
 */
export interface ScheduleSpecInput {
  kind: string;
  payload?: Buffer | Uint8Array | string | unknown;
  queue?: string;
  priority?: number;
  maxAttempts?: number;
  timeoutSeconds?: number;
  labels?: Record<string, string>;
  dedupeKey?: string;
  webhook?: WebhookConfig;
  concurrencyKey?: string;
  cron?: string;
  timeZone?: string;
  intervalSeconds?: number;
  jitterSeconds?: number;
  overlapPolicy?: OverlapPolicy | string;
  catchupPolicy?: CatchupPolicy | string;
  description?: string;
}

/** jobwire.v1.ScheduleSpec as the server returns it (effective values filled in). */
export interface ScheduleSpec {
  template: {
    queue: string; kind: string; payload: Buffer; priority: number; maxAttempts: number; timeout: Duration | null;
    dedupeKey: string; labels: Record<string, string>; webhook: Required<WebhookConfig> | null;
  };
  /** Which timing is set. */
  timing: 'cron' | 'interval';
  cron?: string;
  interval?: Duration | null;
  timeZone: string;
  jitter: Duration | null;
  overlapPolicy: OverlapPolicy;
  catchupPolicy: CatchupPolicy;
  description: string;
}

export interface Schedule {
  id: string;
  spec: ScheduleSpec;
  paused: boolean;
  /** Declared in the server's config file: it can be paused and triggered, not updated or deleted. */
  fromConfig: boolean;
  /** The next firing times (at most 5), the earliest first; empty while paused. */
  nextFireTimes: Timestamp[];
  lastFireTime: Timestamp | null;
  lastJobId: string;
  createTime: Timestamp | null;
  updateTime: Timestamp | null;
}

/** Filters of ListJobs, CancelJobs and RetryJobs; every one given must match. */
export interface JobFilter {
  queue?: string;
  kind?: string;
  /** With or without the prefix: 'FAILED' or 'JOB_STATE_FAILED'. */
  states?: string[];
  /** Exact key/value pairs. */
  labels?: Record<string, string>;
  /** Keys that must be present, whatever their value. */
  labelKeys?: string[];
  /** Key -> values, any of which matches: `{env: ['prod', 'staging']}`. */
  labelIn?: Record<string, string[] | string>;
  createdAfter?: Date | number | string | Timestamp;
  createdBefore?: Date | number | string | Timestamp;
  /** Only finished jobs (SUCCEEDED, FAILED, CANCELLED; STALE ones keep their finish time). */
  finishedAfter?: Date | number | string | Timestamp;
  finishedBefore?: Date | number | string | Timestamp;
}

/** What cancelJobs / retryJobs did (or, with dryRun, would act on). */
export interface BulkResult {
  matched: number;
  changed: number;
  /** cancelJobs: RUNNING jobs among `changed` that were asked to stop. */
  cancelRequested: number;
  /** Matched jobs left unchanged, per reason (e.g. ALREADY_FINISHED, STILL_ACTIVE). */
  skipped: Record<string, number>;
  dryRun: boolean;
}

export interface EventStream extends AsyncIterableIterator<JobEvent> {
  /** Cancels the call; the iterator then ends without an error. */
  cancel(): void;
}

export interface FieldViolation { field: string; description: string }

export class JobwireError extends Error {
  /** gRPC status code number. */
  readonly code: number;
  /** gRPC status code name, e.g. "NOT_FOUND". */
  readonly codeName: string;
  /** The server's human-readable status message. */
  readonly details: string;
  /** google.rpc.ErrorInfo reason (stable, e.g. "JOB_NOT_FOUND"); null when none was sent. */
  readonly reason: string | null;
  readonly domain: string | null;
  readonly errorMetadata: Record<string, string>;
  /** google.rpc.BadRequest field violations, if any. */
  readonly fieldViolations: FieldViolation[];
  readonly metadata: grpcNs.Metadata | null;
}

export interface StatusDetails {
  code: number;
  message: string;
  details: { typeUrl: string; value: Buffer }[];
}

export function decodeStatusDetails(buf: Buffer): StatusDetails | null;
export function timestampToDate(ts: Timestamp | null | undefined): Date | null;

export class JobwireClient {
  constructor(target: string, options?: ClientOptions);
  waitForReady(timeoutMs?: number): Promise<void>;
  enqueue(kind: string, options?: EnqueueOptions): Promise<{ job: Job; deduplicated: boolean }>;
  get(id: string): Promise<Job>;
  cancel(id: string, reason?: string): Promise<Job>;
  retry(id: string, options?: { fromStart?: boolean }): Promise<Job>;
  /** One page of matching jobs, newest first; '' as nextPageToken on the last page. */
  listJobs(filter?: JobFilter, options?: { pageSize?: number; pageToken?: string }): Promise<{ jobs: Job[]; nextPageToken: string }>;
  /** Cancels every matching job (admin scope when more than one matches); `all` is needed for an empty filter. */
  cancelJobs(filter?: JobFilter, options?: { all?: boolean; dryRun?: boolean; reason?: string }): Promise<BulkResult>;
  /** Queues every matching finished job again (admin scope when more than one matches). */
  retryJobs(filter?: JobFilter, options?: { all?: boolean; dryRun?: boolean; fromStart?: boolean }): Promise<BulkResult>;
  /**
   * One job's events until the terminal one. Resumes after the last sequence received when the server
   * ends the stream with UNAVAILABLE or RESOURCE_EXHAUSTED (TOO_MANY_STREAMS, WATCH_TOO_SLOW).
   */
  watch(id: string, options?: WatchOptions): EventStream;
  createSchedule(id: string, spec: ScheduleSpecInput, options?: { paused?: boolean }): Promise<Schedule>;
  getSchedule(id: string): Promise<Schedule>;
  listSchedules(options?: { pageSize?: number; pageToken?: string }): Promise<{ schedules: Schedule[]; nextPageToken: string }>;
  /** Replaces the spec as a whole. */
  updateSchedule(id: string, spec: ScheduleSpecInput): Promise<Schedule>;
  deleteSchedule(id: string): Promise<void>;
  pauseSchedule(id: string): Promise<Schedule>;
  resumeSchedule(id: string): Promise<Schedule>;
  /** `job`: the job enqueued, or with `skipped` the previous firing's job, still active. */
  triggerSchedule(id: string, options?: { requestId?: string }): Promise<{ job: Job | null; skipped: boolean }>;
  /** Starts nothing more from the queue until `resumeQueue` (it still takes enqueues). */
  pauseQueue(name: string): Promise<Queue>;
  resumeQueue(name: string): Promise<Queue>;
  getQueue(name: string): Promise<Queue>;
  listQueues(options?: { pageSize?: number; pageToken?: string }): Promise<{ queues: Queue[]; nextPageToken: string }>;
  updateQueue(name: string, settings: QueueSettingsInput): Promise<Queue>;
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// Worker (WorkerService.Connect): runs the phases of the kinds it declares.

/** Thrown by a phase handler when no retry can succeed: the job fails at once. */
export class PermanentError extends Error {
  constructor(message?: string, options?: { cause?: unknown });
}

export interface RetryableErrorOptions {
  /** Retry after this many milliseconds instead of the kind's backoff. */
  retryAfterMs?: number | null;
  cause?: unknown;
}

/** Thrown by a phase handler to have the job retried while it has attempts left. */
export class RetryableError extends Error {
  constructor(message?: string, options?: RetryableErrorOptions);
  constructor(options: RetryableErrorOptions & { message?: string });
  readonly retryAfterMs: number | null;
}

/** The job as a phase handler sees it. */
export interface WorkerJob {
  id: string;
  attempt: number;
  kind: string;
  queue: string;
  payload: Buffer;
  labels: Record<string, string>;
  /** Every phase of the job, in order. */
  phases: string[];
  /** The phase running now. */
  phase: string;
  /** Results of the phases already done (earlier in this attempt, or kept from an earlier one). */
  results: Record<string, Buffer>;
  /** W3C trace context of the job ('' when none). */
  traceparent: string;
  /** The payload decoded as JSON (null when empty); throws a PermanentError when it is not JSON. */
  json<T = unknown>(): T;
}

/** Why a handler's signal was aborted (its `reason`). */
export interface AbortReason extends Error {
  name: 'AbortError';
  code: 'ABORT_ERR';
  /**
   * 'cancel': the job was cancelled, its phase ran past its timeout, or the server is shutting down
   * (the message ends with the server's reason: the user's, the timeout, or "shutdown"); 'drain': this worker's drain ran out of time; 'lost': the attempt is not
   * this worker's any more (fenced, dropped after a reconnect, or the worker stopped).
   */
  why: 'cancel' | 'drain' | 'lost';
}

export interface PhaseContext {
  /** Aborted when the handler should stop; `signal.reason` is an AbortReason. */
  signal: AbortSignal;
  /** The phase running. */
  phase: string;
  /** Reports progress of the phase (0-100; message up to 1024 characters); seen by watchers. */
  progress(percent: number, message?: string): void;
}

/** Returns the phase's result: bytes as is, a string as UTF-8, nothing as empty, anything else as JSON. */
export type PhaseHandler = (job: WorkerJob, context: PhaseContext) =>
  Buffer | Uint8Array | string | unknown | Promise<Buffer | Uint8Array | string | unknown>;

export interface KindOptions {
  /** Queue a job of this kind goes to when Enqueue names none ('' : the server's default queue). */
  queue?: string;
  /** Attempts a job gets when Enqueue sets none (0: the server's default, 3). */
  maxAttempts?: number;
  /** Per-phase timeout when Enqueue sets none, in milliseconds (0: none). */
  timeoutMs?: number;
  /** Backoff before the first retry, doubling with each attempt (0: the server's default, 1 s). */
  retryBaseDelayMs?: number;
  /** Longest backoff (0: the server's default, 300 s). */
  retryMaxDelayMs?: number;
}

export class Kind {
  constructor(name: string, options?: KindOptions);
  readonly name: string;
  /** Phase names in the order they run. */
  readonly phases: string[];
  /** Adds the next phase; returns this kind, to chain. */
  phase(name: string, handler: PhaseHandler): this;
}

export interface ReconnectPolicy {
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  multiplier?: number;
}

export interface WorkerOptions {
  /** host:port of the server. */
  target: string;
  /** Bearer token with the `jobs:work` scope. */
  token?: string;
  /** As for JobwireClient. */
  tls?: boolean | TlsOptions;
  /** Queues to take jobs from; empty (the default): every queue. */
  queues?: string[];
  /** Jobs run at once, 1-1024 (default 100, as the server's pool). */
  slots?: number;
  /** Stable identity of this process (default `<host>:<pid>`), 1-128 of letters, digits, `.-_:`. */
  workerId?: string;
  channelOptions?: grpcNs.ChannelOptions;
  protoDir?: string;
  /** Waits between sessions: each randomised down by up to half; defaults to DEFAULT_RECONNECT. */
  reconnect?: ReconnectPolicy;
}

export interface WorkerSession {
  sessionId: string;
  leaseTtlMs: number;
  pingIntervalMs: number;
  /** Jobs held from the previous session that this worker keeps running. */
  kept: string[];
  /** Jobs held from the previous session that were stopped (their attempt is over). */
  dropped: string[];
}

export const DEFAULT_SLOTS: number;
export const DEFAULT_RECONNECT: Readonly<Required<ReconnectPolicy>>;

export class Worker extends EventEmitter {
  constructor(options: WorkerOptions);
  readonly slots: number;
  readonly workerId: string;
  readonly queues: string[];
  /** Slots taken now: jobs held, and handlers still running after their job was taken away. */
  readonly busy: number;
  /** Declares a kind before run() (or returns the one declared with that name). */
  kind(name: string, options?: KindOptions): Kind;
  /**
   * Connects and runs jobs, reconnecting whenever the session ends, until drained. Rejects with a
   * JobwireError when the server refuses the worker for good (e.g. reason KIND_MISMATCH).
   */
  run(): Promise<void>;
  /** Stops taking work, lets running jobs finish for `timeoutMs` (default 30000), gives back the rest. */
  drain(options?: { timeoutMs?: number }): Promise<void>;

  on(event: 'session', listener: (session: WorkerSession) => void): this;
  on(event: 'disconnect', listener: (info: { error: JobwireError | null; retryInMs: number }) => void): this;
  on(event: 'warning', listener: (message: string) => void): this;
  once(event: 'session', listener: (session: WorkerSession) => void): this;
  once(event: 'disconnect', listener: (info: { error: JobwireError | null; retryInMs: number }) => void): this;
  once(event: 'warning', listener: (message: string) => void): this;
}

export default JobwireClient;
