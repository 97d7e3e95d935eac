// The Node worker against a server with token auth (--tokens-file): a `jobs:work` token limited to a
// queue runs jobs of that queue; no token, a token without `jobs:work`, or a worker asking for more
// queues than its token allows are refused for good (run() rejects, no reconnecting).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';

import { JobwireClient, JobwireError, Worker } from '../src/index.js';
import { startServer } from './live-server.js';
import { eventsOf, finalState, summary, within } from './waiting.js';

const WORKER_TOKEN = 'worker-secret-for-tests';
const CLIENT_TOKEN = 'client-secret-for-tests';
const sha256 = (secret) => crypto.createHash('sha256').update(secret, 'utf8').digest('hex');

describe('a Node worker with tokens', { timeout: 60_000 }, () => {
  let dir;
  let server;
  let client;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobwire-node-worker-auth-'));
    const tokens = path.join(dir, 'tokens.toml');
    fs.writeFileSync(tokens, [
      '[[token]]', 'name = "media-workers"', `sha256 = "${sha256(WORKER_TOKEN)}"`, 'scopes = ["jobs:work"]',
      'queues = ["media"]', '',
      '[[token]]', 'name = "app"', `sha256 = "${sha256(CLIENT_TOKEN)}"`, 'scopes = ["jobs:read", "jobs:write"]', '',
    ].join('\n'));
    server = await startServer({ dir, flags: ['--tokens-file', tokens] });
    client = new JobwireClient(server.target, { token: CLIENT_TOKEN, timeoutMs: 15_000 });
  });

  after(async () => {
    client?.close();
    await server?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a jobs:work token limited to a queue runs that queue\'s jobs', async () => {
    const worker = new Worker({ target: server.target, token: WORKER_TOKEN, queues: ['media'] });
    worker.kind('node.authed', { queue: 'media' }).phase('work', (job) => `ran ${job.queue}`);
    const welcomed = once(worker, 'session');
    const running = worker.run();
    try {
      await within(10_000, welcomed, 'the welcome');
      const { job } = await client.enqueue('node.authed');
      const events = await within(15_000, eventsOf(client, job.id), 'the job');
      assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
      assert.equal((await client.get(job.id)).phases[0].result.toString(), 'ran media');
    } finally {
      await worker.drain({ timeoutMs: 1000 });
      await running;
    }
  });

  for (const [name, options, code] of [
    ['no token', { queues: ['media'] }, 'UNAUTHENTICATED'],
    ['a token without jobs:work', { token: CLIENT_TOKEN, queues: ['media'] }, 'PERMISSION_DENIED'],
    ['every queue with a token limited to one', { token: WORKER_TOKEN }, 'PERMISSION_DENIED'],
  ]) {
    test(`${name} is refused for good: ${code}`, async () => {
      const worker = new Worker({ target: server.target, ...options });
      worker.kind('node.authed', { queue: 'media' }).phase('work', () => 'never');
      const disconnects = [];
      worker.on('disconnect', (info) => disconnects.push(info));
      await assert.rejects(within(10_000, worker.run(), 'the refusal'), (err) => {
        assert.ok(err instanceof JobwireError, String(err));
        assert.equal(err.codeName, code, err.message);
        return true;
      });
      assert.deepEqual(disconnects, [], 'a refusal is not retried');
    });
  }
});
