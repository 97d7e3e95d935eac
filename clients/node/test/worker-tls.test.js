// The Node worker over mutual TLS: a server started with --tls-cert/--tls-key/--tls-client-ca (a
// throwaway CA made with openssl) takes a worker and a client that present certificates of that CA.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { JobwireClient, Worker } from '../src/index.js';
import { startServer } from './live-server.js';
import { eventsOf, finalState, summary, within } from './waiting.js';

let dir;
let server;
let tls;

/** A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`. */
function makePki(root) {
  const openssl = (...args) => execFileSync('openssl', args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    throw new Error('openssl is needed to make the test certificates: install it (Debian: apt-get install openssl)');
  }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
  for (const [name, ext] of [['server', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], ['client', 'extendedKeyUsage=clientAuth']]) {
    openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    fs.writeFileSync(path.join(root, `${name}.ext`), `${ext}\n`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`);
  }
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobwire-node-worker-tls-'));
  makePki(dir);
  const file = (name) => path.join(dir, name);
  tls = { rootCerts: fs.readFileSync(file('ca.pem')), privateKey: fs.readFileSync(file('client.key')), certChain: fs.readFileSync(file('client.pem')) };
  server = await startServer({
    dir, tls, flags: ['--tls-cert', file('server.pem'), '--tls-key', file('server.key'), '--tls-client-ca', file('ca.pem')],
  });
});

after(async () => {
  await server?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('a worker and a client with certificates of the server\'s CA run a job over mutual TLS', { timeout: 60_000 }, async () => {
  const worker = new Worker({ target: server.target, tls, slots: 1 });
  worker.kind('node.secure').phase('work', (job) => `secure ${job.json().n}`);
  const welcomed = once(worker, 'session');
  const running = worker.run();
  const client = new JobwireClient(server.target, { tls, timeoutMs: 15_000 });
  try {
    await within(10_000, welcomed, 'the welcome');
    const { job } = await client.enqueue('node.secure', { payload: { n: 7 } });
    const events = await within(15_000, eventsOf(client, job.id), 'the job');
    assert.equal(finalState(events), 'JOB_STATE_SUCCEEDED', summary(events));
    assert.equal((await client.get(job.id)).phases[0].result.toString(), 'secure 7');
  } finally {
    client.close();
    await worker.drain({ timeoutMs: 1000 });
    await running;
  }
});
