// The queue methods of the Node.js client against a live jobwire server (live-server.js).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { JobwireClient, JobwireError } from '../src/index.js';
import { startServer } from './live-server.js';

const newName = () => `q-${randomUUID().slice(0, 8)}`;

describe('queues against a live jobwire server', { timeout: 120_000 }, () => {
  let server;
  let client;

  before(async () => {
    server = await startServer();
    client = new JobwireClient(server.target, { timeoutMs: 15_000 });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test('pause, update, get, list and resume; a waiting job says why', async () => {
    const name = newName();
    const paused = await client.pauseQueue(name);
    assert.equal(paused.name, name);
    assert.equal(paused.settings.paused, true);
    assert.ok(paused.updateTime);

    const { job } = await client.enqueue('noop', { queue: name, payload: { n: 1 }, concurrencyKey: 'tenant-a' });
    assert.equal(job.concurrencyKey, 'tenant-a');
    const waiting = await client.get(job.id);
    assert.equal(waiting.state, 'JOB_STATE_QUEUED');
    assert.equal(waiting.waitingReason, 'WAITING_REASON_QUEUE_PAUSED');

    const updated = await client.updateQueue(name, { rateLimit: 50, rateBurst: 10, keyLimit: 1 });
    assert.equal(updated.settings.rateLimit, 50);
    assert.equal(updated.settings.rateBurst, 10);
    assert.equal(updated.settings.keyLimit, 1);
    assert.equal(updated.stats.queued, '1');
    const cleared = await client.updateQueue(name, { rateLimit: 0 });
    assert.equal(cleared.settings.rateLimit, 0, 'a setting given as 0 is sent and clears the limit');
    assert.equal(cleared.settings.keyLimit, 1, 'a setting not given is kept');

    assert.deepEqual((await client.getQueue(name)).settings, cleared.settings);
    const { queues } = await client.listQueues({ pageSize: 1000 });
    assert.ok(queues.some((q) => q.name === name && q.settings.paused));

    const resumed = await client.resumeQueue(name);
    assert.equal(resumed.settings.paused, false);
    for await (const event of client.watch(job.id)) {
      if (event.type === 'EVENT_TYPE_SUCCEEDED') break;
    }
    assert.equal((await client.get(job.id)).state, 'JOB_STATE_SUCCEEDED');
  });

  test('bad settings are INVALID_ARGUMENT with field violations; an unknown queue is NOT_FOUND', async () => {
    await assert.rejects(client.updateQueue(newName(), { rateLimit: -1, keyLimit: 10_001 }), (err) => {
      assert.ok(err instanceof JobwireError);
      assert.equal(err.codeName, 'INVALID_ARGUMENT');
      assert.deepEqual(err.fieldViolations.map((v) => v.field).sort(), ['key_limit', 'rate_limit']);
      return true;
    });
    await assert.rejects(client.getQueue(newName()), (err) => err instanceof JobwireError
      && err.codeName === 'NOT_FOUND' && err.reason === 'QUEUE_NOT_FOUND');
    assert.throws(() => client.updateQueue('q', { rateLimit: 'fast' }), TypeError);
  });
});
