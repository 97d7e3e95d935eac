// What a phase handler sees, returns and throws: the errors that classify a failure, a Kind with its
// phases, the job as a handler sees it, and how results and failures become protocol messages.

const NAME_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;
const MAX_FAILURE_MESSAGE = 4096;

// ---------------------------------------------------------------------------------------------
// What handlers throw

/** Thrown by a phase handler when no retry can succeed: the job fails at once. */
export class PermanentError extends Error {
  constructor(message = '', options) {
    super(message, options);
    this.name = 'PermanentError';
  }
}

/**
 * Thrown by a phase handler to have the job retried (while it has attempts left), after
 * `retryAfterMs` instead of its kind's backoff when given: `new RetryableError('busy', { retryAfterMs: 500 })`
 * or `new RetryableError({ retryAfterMs: 500 })`.
 */
export class RetryableError extends Error {
  constructor(message = '', options = {}) {
    if (message !== null && typeof message === 'object') [message, options] = [message.message ?? '', message];
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const { retryAfterMs = null } = options;
    if (retryAfterMs !== null && !(Number.isFinite(retryAfterMs) && retryAfterMs >= 0)) {
      throw new RangeError('retryAfterMs must be a number >= 0');
    }
    this.name = 'RetryableError';
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The reason of a handler's AbortSignal: `why` is 'cancel' (the job was cancelled, or its phase ran past
 * its timeout: the server enforces timeouts with a cancel), 'drain' (the worker's drain ran out of
 * time) or 'lost' (the attempt is not this worker's any more).
 */
export function abortReason(why, message) {
  const err = new Error(message);
  err.name = 'AbortError';
  err.code = 'ABORT_ERR';
  err.why = why;
  return err;
}

// ---------------------------------------------------------------------------------------------
// Kinds

/** A kind of job this worker runs: its phases in order, and the defaults it declares to the server. */
export class Kind {
  constructor(name, { queue = '', maxAttempts = 0, timeoutMs = 0, retryBaseDelayMs = 0, retryMaxDelayMs = 0 } = {}) {
    checkName('kind', name);
    if (queue) checkName('queue', queue);
    if (!Number.isInteger(maxAttempts) || maxAttempts < 0) throw new RangeError('maxAttempts must be an integer >= 0');
    for (const [option, ms] of Object.entries({ timeoutMs, retryBaseDelayMs, retryMaxDelayMs })) {
      if (!(Number.isFinite(ms) && ms >= 0)) throw new RangeError(`${option} must be >= 0 (0: the server's default)`);
    }
    this.name = name;
    this.queue = queue;
    this.maxAttempts = maxAttempts;
    this.timeoutMs = timeoutMs;
    this.retryBaseDelayMs = retryBaseDelayMs;
    this.retryMaxDelayMs = retryMaxDelayMs;
    this._phases = new Map();
  }

  /** Adds the next phase: `handler(job, { signal, progress, phase })` returns its result. Returns this kind. */
  phase(name, handler) {
    checkName('phase', name);
    if (this._phases.has(name)) throw new Error(`kind ${this.name} already has a phase named ${name}`);
    if (typeof handler !== 'function') throw new TypeError(`the handler of phase ${name} must be a function`);
    this._phases.set(name, handler);
    return this;
  }

  /** Phase names in the order they run. */
  get phases() {
    return [...this._phases.keys()];
  }

  _declaration() {
    return {
      name: this.name,
      phases: this.phases,
      defaultQueue: this.queue,
      defaultMaxAttempts: this.maxAttempts,
      defaultTimeout: this.timeoutMs ? msToDuration(this.timeoutMs) : null,
      retryBaseDelay: this.retryBaseDelayMs ? msToDuration(this.retryBaseDelayMs) : null,
      retryMaxDelay: this.retryMaxDelayMs ? msToDuration(this.retryMaxDelayMs) : null,
    };
  }
}

export function checkName(what, name) {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new TypeError(`${what} name ${JSON.stringify(name)} must be 1-128 letters, digits, '.', '-' or '_'`);
  }
}

// ---------------------------------------------------------------------------------------------
// Conversions

export const msToDuration = (ms) => ({ seconds: String(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) });
export const durationToMs = (d) => (d ? Number(d.seconds) * 1000 + Math.round((d.nanos ?? 0) / 1e6) : 0);

/** A handler's return value as result bytes: Buffer/Uint8Array as is, string as UTF-8, nothing as empty, else JSON. */
export function encodeResult(value) {
  if (value === undefined || value === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  const json = JSON.stringify(value); // throws on a BigInt or a cycle
  if (json === undefined) throw new TypeError(`phase returned a ${typeof value}, which is not bytes, a string or JSON`);
  return Buffer.from(json, 'utf8');
}

/** A handler's error as a PhaseFailure, classified as the server classifies its own handlers' exceptions. */
export function failureOf(err) {
  const type = (err instanceof Error ? err.name || err.constructor?.name : typeof err) || 'Error';
  const message = String((err instanceof Error ? err.message : String(err)) || type).slice(0, MAX_FAILURE_MESSAGE);
  const failure = { type, message, retryable: !(err instanceof PermanentError), retryAfter: null };
  if (err instanceof RetryableError && err.retryAfterMs !== null) failure.retryAfter = msToDuration(err.retryAfterMs);
  return failure;
}

/** The job as a phase handler sees it. */
export function jobView(task) {
  const { assignment: a } = task;
  return {
    id: a.jobId,
    attempt: a.attempt,
    kind: a.kind,
    queue: a.queue,
    payload: a.payload,
    labels: { ...a.labels },
    phases: [...a.phases],
    phase: task.phase,
    results: { ...task.results },
    traceparent: a.traceparent,
    /** The payload decoded as JSON (null when empty); a payload that is not JSON is a PermanentError. */
    json() {
      if (a.payload.length === 0) return null;
      try {
        return JSON.parse(a.payload.toString('utf8'));
      } catch (err) {
        throw new PermanentError(`payload is not valid JSON: ${err.message.slice(0, 200)}`);
      }
    },
  };
}

export function tooLarge(phase, size, limit) {
  return {
    type: 'RESULT_TOO_LARGE', retryable: false, retryAfter: null,
    message: `phase '${phase}' returned ${size} bytes, more than the server takes${limit ? ` (${limit})` : ''}`,
  };
}

/** A phase done as the wire has it: exactly one field of the outcome set. */
export function wire(done) {
  const { result, failure, cancelled, ...rest } = done;
  if (failure) return { ...rest, failure };
  if (cancelled) return { ...rest, cancelled: true };
  return { ...rest, result: result ?? Buffer.alloc(0) };
}
