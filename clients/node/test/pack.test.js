// The published package, as a user gets it: `npm pack` makes the tarball, which is installed into a
// new project outside the repository; from there a job is enqueued and watched on a live server.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startServer } from './live-server.js';

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund'], {
  cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 180_000,
});

let work;
let server;

before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'jobwire-node-pack-'));
  server = await startServer();
});

after(async () => {
  await server?.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('the packed tarball installs outside the repository and runs a job', { timeout: 240_000 }, () => {
  const [packed] = JSON.parse(npm(['pack', '--json', '--pack-destination', work], PACKAGE_DIR));
  const files = packed.files.map((f) => f.path).sort();
  assert.equal(packed.name, '@jobwire/client');
  for (const wanted of ['README.md', 'package.json', 'proto/jobwire/v1/jobwire.proto', 'proto/jobwire/v1/worker.proto',
    'src/errors.js', 'src/index.d.ts', 'src/index.js', 'src/transport.js', 'src/worker.js']) {
    assert.ok(files.includes(wanted), `${wanted} missing from the tarball: ${files.join(', ')}`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('scripts/')), files.join(', '));
  assert.ok(!fs.existsSync(path.join(PACKAGE_DIR, 'proto')), 'the proto copy is removed after packing');

  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  npm(['install', path.join(work, packed.filename)], app);
  fs.writeFileSync(path.join(app, 'main.js'), `
    import { once } from 'node:events';
    import { JobwireClient, Worker } from '@jobwire/client';
    const client = new JobwireClient(process.argv[2], { timeoutMs: 15000 });
    const { job } = await client.enqueue('sleep', { payload: { seconds: 0.2, phases: 2 } });
    const types = [];
    for await (const ev of client.watch(job.id)) types.push(ev.type);
    const worker = new Worker({ target: process.argv[2], slots: 1 });
    worker.kind('packed.echo').phase('echo', (remote) => remote.json().text.toUpperCase());
    const running = worker.run();
    await once(worker, 'session');
    const { job: echo } = await client.enqueue('packed.echo', { payload: { text: 'hi' } });
    for await (const ev of client.watch(echo.id)) { /* until it ends */ }
    const echoed = (await client.get(echo.id)).phases[0].result.toString();
    await worker.drain();
    await running;
    console.log(JSON.stringify({ types, state: (await client.get(job.id)).state, echoed }));
    client.close();
  `);
  const env = { ...process.env };
  delete env.JOBWIRE_PROTO_DIR;
  const result = JSON.parse(execFileSync('node', ['main.js', server.target], {
    cwd: app, encoding: 'utf8', env, timeout: 60_000,
  }));
  assert.equal(result.state, 'JOB_STATE_SUCCEEDED');
  assert.equal(result.echoed, 'HI', 'a worker from the installed package ran a job');
  assert.equal(result.types.at(-1), 'EVENT_TYPE_SUCCEEDED');
  assert.ok(result.types.filter((t) => t === 'EVENT_TYPE_PHASE_SUCCEEDED').length === 2, result.types.join());
  // The installed client read the proto packed with it, not the repository's.
  const installed = path.join(app, 'node_modules', '@jobwire', 'client');
  assert.ok(fs.existsSync(path.join(installed, 'proto', 'jobwire', 'v1', 'jobwire.proto')));
  assert.ok(fs.existsSync(path.join(installed, 'src', 'index.d.ts')));
});
