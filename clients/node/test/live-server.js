// Starts a real jobwire server for a test: `$JOBWIRE_PYTHON -m jobwire_server serve` on a free loopback
// port with a fresh database; `ready()` resolves once its health check answers (no fixed sleeps).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { JobwireClient } from '../src/index.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function pythonExecutable() {
  if (process.env.JOBWIRE_PYTHON) return process.env.JOBWIRE_PYTHON;
  const venv = path.join(REPO_ROOT, '.venv', 'bin', 'python');
  return fs.existsSync(venv) ? venv : 'python3';
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * `{target, stop()}` of a serving jobwire server; throws with its output when it does not start.
 * `flags` are added to `serve`'s arguments; giving the `dir` (and `target`) of a stopped server starts
 * it again on the same database (and address); a `dir` given is left in place by `stop()`.
 * `stop()` sends SIGTERM (the server drains); `stop('SIGKILL')` kills it where it stands; `signal(name)`
 * sends any other signal (SIGSTOP freezes it, SIGCONT thaws it).
 * `tls` is the readiness probe's (JobwireClient's `tls` option), for a server started with TLS flags.
 */
export async function startServer({ flags = [], dir, target, readyMs = 20_000, tls } = {}) {
  const ownDir = !dir;
  dir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'jobwire-node-server-'));
  target ??= `127.0.0.1:${await freePort()}`;
  // No HTTP gateway (its default port is one for the whole machine): tests run side by side.
  const args = ['-m', 'jobwire_server', 'serve', '--listen', target, '--db', path.join(dir, 'j.db'),
    '--http-listen', 'off', ...flags];
  const server = spawn(pythonExecutable(), args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  server.stdout.on('data', (chunk) => { output += chunk; });
  server.stderr.on('data', (chunk) => { output += chunk; });
  const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
  const stop = async (signal = 'SIGTERM') => {
    if (server.exitCode === null && server.signalCode === null) server.kill(signal);
    const status = await exited;
    if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
    return status;
  };
  const probe = new JobwireClient(target, {
    tls,
    channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 500 },
  });
  try {
    await Promise.race([
      probe.waitForReady(readyMs),
      exited.then(({ code }) => { throw new Error(`server exited with ${code} before serving:\n${output}`); }),
    ]);
  } catch (err) {
    await stop();
    throw err;
  } finally {
    probe.close();
  }
  const signal = (name) => server.kill(name);
  return { target, dir, stop, signal, output: () => output };
}
