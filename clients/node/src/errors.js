// Errors of calls and streams: JobwireError, with the rich details the server attaches
// (google.rpc.ErrorInfo, google.rpc.BadRequest) decoded from `grpc-status-details-bin`.

import * as grpc from '@grpc/grpc-js';

/** Status code number -> name, e.g. 5 -> "NOT_FOUND". */
const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

/**
 * Error raised for every failed call. `code` is the gRPC status number, `codeName` its name,
 * `details` the server's (human) message, `reason`/`domain`/`errorMetadata` come from the
 * google.rpc.ErrorInfo detail when the server sent one (match on `reason`, it is stable), and
 * `fieldViolations` from a google.rpc.BadRequest detail.
 */
export class JobwireError extends Error {
  constructor({ code, details, metadata, reason = null, domain = null, errorMetadata = {}, fieldViolations = [], cause }) {
    super(`${CODE_NAMES[code] ?? code}: ${details}${reason ? ` [${reason}]` : ''}`, cause ? { cause } : undefined);
    this.name = 'JobwireError';
    this.code = code;
    this.codeName = CODE_NAMES[code] ?? String(code);
    this.details = details;
    this.reason = reason;
    this.domain = domain;
    this.errorMetadata = errorMetadata;
    this.fieldViolations = fieldViolations;
    this.metadata = metadata ?? null;
  }
}

// A tiny protobuf wire-format reader, enough for google.rpc.Status and its details.
function* readFields(buf) {
  let pos = 0;
  const varint = () => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('truncated varint');
      const b = buf[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) yield { field, wire, value: varint() };
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw new Error('truncated field');
      yield { field, wire, value: buf.subarray(pos, pos + len) };
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }
}

const utf8 = (b) => Buffer.from(b).toString('utf8');

function decodeErrorInfo(buf) {
  const out = { reason: '', domain: '', metadata: {} };
  for (const f of readFields(buf)) {
    if (f.wire !== 2) continue;
    if (f.field === 1) out.reason = utf8(f.value);
    else if (f.field === 2) out.domain = utf8(f.value);
    else if (f.field === 3) {
      let k = '';
      let v = '';
      for (const e of readFields(f.value)) {
        if (e.wire !== 2) continue;
        if (e.field === 1) k = utf8(e.value);
        else if (e.field === 2) v = utf8(e.value);
      }
      out.metadata[k] = v;
    }
  }
  return out;
}

function decodeBadRequest(buf) {
  const violations = [];
  for (const f of readFields(buf)) {
    if (f.field !== 1 || f.wire !== 2) continue;
    const v = { field: '', description: '' };
    for (const g of readFields(f.value)) {
      if (g.wire !== 2) continue;
      if (g.field === 1) v.field = utf8(g.value);
      else if (g.field === 2) v.description = utf8(g.value);
    }
    violations.push(v);
  }
  return violations;
}

/** Decodes a `grpc-status-details-bin` value (google.rpc.Status); null if it is malformed. */
export function decodeStatusDetails(buf) {
  try {
    const status = { code: 0, message: '', details: [] };
    for (const f of readFields(buf)) {
      if (f.field === 1 && f.wire === 0) status.code = Number(f.value);
      else if (f.field === 2 && f.wire === 2) status.message = utf8(f.value);
      else if (f.field === 3 && f.wire === 2) {
        const any = { typeUrl: '', value: Buffer.alloc(0) };
        for (const g of readFields(f.value)) {
          if (g.wire !== 2) continue;
          if (g.field === 1) any.typeUrl = utf8(g.value);
          else if (g.field === 2) any.value = Buffer.from(g.value);
        }
        status.details.push(any);
      }
    }
    return status;
  } catch {
    return null;
  }
}

/** A grpc-js error or status (or anything thrown) as a JobwireError. */
export function toJobwireError(err) {
  if (err instanceof JobwireError) return err;
  if (typeof err?.code !== 'number') {
    return new JobwireError({ code: grpc.status.UNKNOWN, details: String(err?.message ?? err), cause: err });
  }
  const fields = { code: err.code, details: err.details ?? err.message ?? '', metadata: err.metadata, cause: err };
  const raw = err.metadata?.get?.('grpc-status-details-bin')?.[0];
  const status = raw ? decodeStatusDetails(Buffer.from(raw)) : null;
  for (const any of status?.details ?? []) {
    const type = any.typeUrl.slice(any.typeUrl.lastIndexOf('/') + 1);
    try {
      if (type === 'google.rpc.ErrorInfo' && fields.reason === undefined) {
        const info = decodeErrorInfo(any.value);
        fields.reason = info.reason;
        fields.domain = info.domain;
        fields.errorMetadata = info.metadata;
      } else if (type === 'google.rpc.BadRequest') {
        fields.fieldViolations = decodeBadRequest(any.value);
      }
    } catch {
      // A detail we cannot decode is ignored; code and details are still reported.
    }
  }
  return new JobwireError(fields);
}
