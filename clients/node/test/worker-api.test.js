// Offline checks of the worker's API (no server needed): the package's exports, the errors handlers
// throw, and what Kind and Worker refuse before anything is sent.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import * as pkg from '../src/index.js';
import { Kind, PermanentError, RetryableError, Worker } from '../src/index.js';

test('the package entry exports the client and the worker, and nothing else', () => {
  assert.deepEqual(Object.keys(pkg).sort(), [
    'DEFAULT_PROTO_DIR', 'DEFAULT_RECONNECT', 'DEFAULT_RETRY', 'DEFAULT_SLOTS', 'JobwireClient', 'JobwireError',
    'Kind', 'PermanentError', 'RetryableError', 'Worker', 'decodeStatusDetails', 'default', 'grpc', 'timestampToDate',
  ]);
  assert.equal(pkg.DEFAULT_SLOTS, 100);
  assert.deepEqual(pkg.DEFAULT_RECONNECT, { initialBackoffMs: 100, maxBackoffMs: 5000, multiplier: 2 });
});

test('RetryableError takes a message and options, or the options alone', () => {
  const plain = new RetryableError('busy');
  assert.ok(plain instanceof Error);
  assert.deepEqual([plain.name, plain.message, plain.retryAfterMs], ['RetryableError', 'busy', null]);
  const later = new RetryableError('busy', { retryAfterMs: 1500 });
  assert.equal(later.retryAfterMs, 1500);
  const bare = new RetryableError({ retryAfterMs: 0 });
  assert.deepEqual([bare.message, bare.retryAfterMs], ['', 0]);
  const cause = new Error('socket hang up');
  assert.equal(new RetryableError('upstream', { cause }).cause, cause);
  assert.throws(() => new RetryableError('x', { retryAfterMs: -1 }), RangeError);
  assert.throws(() => new RetryableError('x', { retryAfterMs: Number.NaN }), RangeError);
});

test('PermanentError is an Error with its own name', () => {
  const err = new PermanentError('not an image');
  assert.ok(err instanceof Error);
  assert.deepEqual([err.name, err.message], ['PermanentError', 'not an image']);
});

test('a Kind chains its phases in order and refuses bad names, duplicates and non-functions', () => {
  const kind = new Kind('thumbnail', { queue: 'media', maxAttempts: 5 });
  assert.equal(kind.phase('fetch', () => 'a').phase('resize', () => 'b'), kind);
  assert.deepEqual(kind.phases, ['fetch', 'resize']);
  assert.throws(() => kind.phase('fetch', () => 'c'), /already has a phase named fetch/);
  assert.throws(() => kind.phase('bad name', () => 'c'), TypeError);
  assert.throws(() => kind.phase('store', 'not a function'), TypeError);
  assert.throws(() => new Kind('x'.repeat(129)), TypeError);
  assert.throws(() => new Kind('ok', { queue: 'no/slash' }), TypeError);
  assert.throws(() => new Kind('ok', { maxAttempts: 1.5 }), RangeError);
  assert.throws(() => new Kind('ok', { timeoutMs: -1 }), RangeError);
});

test('a Worker checks its options, and run() needs kinds with phases', async () => {
  assert.throws(() => new Worker({}), /target is required/);
  assert.throws(() => new Worker({ target: '127.0.0.1:1', slots: 0 }), RangeError);
  assert.throws(() => new Worker({ target: '127.0.0.1:1', slots: 1025 }), RangeError);
  assert.throws(() => new Worker({ target: '127.0.0.1:1', workerId: 'has space' }), TypeError);
  assert.throws(() => new Worker({ target: '127.0.0.1:1', queues: ['bad queue'] }), TypeError);

  const worker = new Worker({ target: '127.0.0.1:1' });
  assert.equal(worker.slots, 100);
  assert.match(worker.workerId, /^[A-Za-z0-9._-]+:\d+$/);
  await assert.rejects(worker.run(), /declare at least one kind/);

  const empty = new Worker({ target: '127.0.0.1:1' });
  assert.equal(empty.kind('thumbnail'), empty.kind('thumbnail'), 'kind() returns the kind declared');
  await assert.rejects(empty.run(), /kind thumbnail has no phase/);

  const drained = new Worker({ target: '127.0.0.1:1' });
  drained.kind('thumbnail').phase('fetch', () => 'x');
  await drained.drain(); // never run: nothing to wait for
  await assert.rejects(drained.run(), /already called/);
});
