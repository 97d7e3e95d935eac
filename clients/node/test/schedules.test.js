// The schedule methods of the Node.js client against a live jobwire server (live-server.js).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { JobwireClient, JobwireError, timestampToDate } from '../src/index.js';
import { startServer } from './live-server.js';

const newId = () => `s-${randomUUID().slice(0, 8)}`;

describe('schedules against a live jobwire server', { timeout: 120_000 }, () => {
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

  test('create, get, list, update, pause, resume and delete', async () => {
    const id = newId();
    const created = await client.createSchedule(id, {
      kind: 'noop', cron: '30 2 * * *', timeZone: 'America/New_York', payload: { day: 'yesterday' },
      labels: { team: 'data' }, jitterSeconds: 300, overlapPolicy: 'skip', catchupPolicy: 'run-once',
      description: 'nightly',
    });
    assert.equal(created.id, id);
    assert.equal(created.paused, false);
    assert.equal(created.fromConfig, false);
    assert.equal(created.spec.timing, 'cron');
    assert.equal(created.spec.cron, '30 2 * * *');
    assert.equal(created.spec.timeZone, 'America/New_York');
    assert.equal(created.spec.overlapPolicy, 'OVERLAP_POLICY_SKIP');
    assert.equal(created.spec.catchupPolicy, 'CATCHUP_POLICY_RUN_ONCE');
    assert.equal(created.spec.jitter.seconds, '300');
    assert.deepEqual(JSON.parse(created.spec.template.payload.toString('utf8')), { day: 'yesterday' });
    // Left unset, max attempts stays 0: each firing takes the queue's default of its moment (else the kind's).
    assert.equal(created.spec.template.maxAttempts, 0);
    assert.equal(created.spec.template.timeout.seconds, '0');
    assert.equal(created.nextFireTimes.length, 5);
    const first = timestampToDate(created.nextFireTimes[0]);
    assert.ok(first > new Date(), `${first} is in the future`);

    assert.deepEqual(await client.getSchedule(id), created);
    const { schedules } = await client.listSchedules({ pageSize: 1000 });
    assert.ok(schedules.some((s) => s.id === id));

    const hourly = await client.updateSchedule(id, { kind: 'noop', intervalSeconds: 3600 });
    assert.equal(hourly.spec.timing, 'interval');
    assert.equal(hourly.spec.interval.seconds, '3600');
    assert.equal(hourly.spec.overlapPolicy, 'OVERLAP_POLICY_ALLOW');
    assert.deepEqual((await client.pauseSchedule(id)).nextFireTimes, []);
    assert.equal((await client.resumeSchedule(id)).nextFireTimes.length, 5);
    await client.deleteSchedule(id);
    await assert.rejects(client.getSchedule(id), (err) => err instanceof JobwireError
      && err.codeName === 'NOT_FOUND' && err.reason === 'SCHEDULE_NOT_FOUND');
  });

  test('a trigger enqueues one job per request id', async () => {
    const id = newId();
    await client.createSchedule(id, { kind: 'noop', intervalSeconds: 86_400, payload: 'hi' }, { paused: true });
    const { job, skipped } = await client.triggerSchedule(id, { requestId: 'once' });
    assert.equal(skipped, false);
    assert.equal(job.labels['jobwire/schedule'], id);
    const again = await client.triggerSchedule(id, { requestId: 'once' });
    assert.equal(again.job.id, job.id);
    assert.equal((await client.getSchedule(id)).lastJobId, job.id);
  });

  test('bad input is INVALID_ARGUMENT with the bad fields named', async () => {
    await assert.rejects(
      client.createSchedule(newId(), { kind: 'noop', cron: '61 * * * *', timeZone: 'Mars/Base', jitterSeconds: -1 }),
      (err) => {
        assert.equal(err.codeName, 'INVALID_ARGUMENT');
        assert.equal(err.reason, 'INVALID_ARGUMENT');
        assert.deepEqual(err.fieldViolations.map((v) => v.field).sort(), ['spec.cron', 'spec.jitter', 'spec.time_zone']);
        return true;
      },
    );
    await assert.rejects(client.createSchedule(newId(), { kind: 'nope', intervalSeconds: 60 }),
      (err) => err.reason === 'UNKNOWN_KIND' && err.fieldViolations[0].field === 'spec.template.kind');
    const id = newId();
    await client.createSchedule(id, { kind: 'noop', cron: '@daily' });
    await assert.rejects(client.createSchedule(id, { kind: 'noop', cron: '@daily' }),
      (err) => err.codeName === 'ALREADY_EXISTS' && err.reason === 'SCHEDULE_EXISTS');
  });
});
