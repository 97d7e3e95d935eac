// How the client and the worker reach the server: the contract loaded at runtime with
// @grpc/proto-loader from proto/jobwire/v1/ (the copy packed into the package, or the repository's
// own), the channel credentials and the bearer token.

import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/**
 * Directory holding `jobwire/v1/jobwire.proto`: the copy inside the installed package (put there by
 * `npm pack`), or, in the repository, the repository's proto/ folder.
 */
export const DEFAULT_PROTO_DIR = [path.resolve(HERE, '..', 'proto'), path.resolve(HERE, '..', '..', '..', 'proto')]
  .find((dir) => fs.existsSync(path.join(dir, 'jobwire', 'v1', 'jobwire.proto')))
  ?? path.resolve(HERE, '..', 'proto');
// Both files of the contract: JobService (jobwire.proto) and WorkerService (worker.proto).
const PROTO_FILES = ['jobwire/v1/jobwire.proto', 'jobwire/v1/worker.proto'];

const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  objects: false,
  oneofs: true,
});

const packageCache = new Map();

/** The client constructor of service `name` ('JobService' or 'WorkerService') of the contract in `protoDir`. */
export function loadService(protoDir, name) {
  const dir = protoDir ?? process.env.JOBWIRE_PROTO_DIR ?? DEFAULT_PROTO_DIR;
  let pkg = packageCache.get(dir);
  if (!pkg) {
    // google/protobuf/{timestamp,duration}.proto are bundled with protobufjs/proto-loader.
    const def = protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [dir] });
    pkg = grpc.loadPackageDefinition(def).jobwire.v1;
    packageCache.set(dir, pkg);
  }
  return pkg[name];
}

/**
 * Channel credentials: false/undefined for plaintext; true for TLS with the system roots; or
 * `{rootCerts, privateKey, certChain}` (Buffers) for a custom CA and/or mutual TLS.
 */
export function channelCredentials(tls) {
  if (!tls) return grpc.credentials.createInsecure();
  if (tls === true) return grpc.credentials.createSsl();
  return grpc.credentials.createSsl(tls.rootCerts ?? null, tls.privateKey ?? null, tls.certChain ?? null);
}

/** Call metadata carrying `authorization: Bearer <token>` (none without a token). */
export function bearerMetadata(token) {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return md;
}
