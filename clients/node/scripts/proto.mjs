// Puts a copy of the contract (proto/jobwire/v1/jobwire.proto) into the package while `npm pack` or
// `npm publish` runs ("prepack"), and removes it afterwards ("postpack" with --remove): the tarball
// carries the proto it was built from, while in the repository the client reads ../../proto directly.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE = path.resolve(PACKAGE, '..', '..', 'proto', 'jobwire');
const COPY = path.join(PACKAGE, 'proto');

fs.rmSync(COPY, { recursive: true, force: true });
if (!process.argv.includes('--remove')) {
  fs.cpSync(SOURCE, path.join(COPY, 'jobwire'), { recursive: true });
}
