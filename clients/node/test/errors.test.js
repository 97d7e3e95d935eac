// Offline checks of the error-detail decoding (no server needed).

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decodeStatusDetails, grpc } from '../src/index.js';

// Minimal protobuf writer for the test vectors.
const varint = (n) => {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Buffer.from(out);
};
const len = (field, bytes) => Buffer.concat([varint((field << 3) | 2), varint(bytes.length), Buffer.from(bytes)]);
const str = (field, s) => len(field, Buffer.from(s, 'utf8'));
const any = (type, value) => Buffer.concat([str(1, `type.googleapis.com/${type}`), len(2, value)]);

test('decodeStatusDetails reads google.rpc.Status with ErrorInfo and BadRequest', () => {
  const errorInfo = Buffer.concat([
    str(1, 'JOB_NOT_FOUND'),
    str(2, 'jobwire.dev'),
    len(3, Buffer.concat([str(1, 'id'), str(2, 'x')])),
  ]);
  const badRequest = len(1, Buffer.concat([str(1, 'priority'), str(2, 'must be 0-10')]));
  const status = Buffer.concat([
    varint((1 << 3) | 0), varint(grpc.status.NOT_FOUND),
    str(2, 'no such job'),
    len(3, any('google.rpc.ErrorInfo', errorInfo)),
    len(3, any('google.rpc.BadRequest', badRequest)),
  ]);
  const decoded = decodeStatusDetails(status);
  assert.equal(decoded.code, 5);
  assert.equal(decoded.message, 'no such job');
  assert.equal(decoded.details.length, 2);
  assert.equal(decoded.details[0].typeUrl, 'type.googleapis.com/google.rpc.ErrorInfo');
  assert.deepEqual(decoded.details[0].value, errorInfo);
});

test('decodeStatusDetails returns null on garbage', () => {
  assert.equal(decodeStatusDetails(Buffer.from([0x0a, 0xff])), null);
});
