"""Kinds for remote worker tests: `jobwire worker --handlers tests.workerkit` imports this module,
so it uses only the client package's handler API (`jobwire.worker`), never the server.

The gated kinds speak the gate protocol of tests/testkit.py (payload ``{"port": N}``; one JSON line
``{"job", "kind", "phase", "attempt", "results"}``; then one byte: ``.`` returns, ``r`` raises a
retryable error, ``p`` a permanent one), so tests drive them with :class:`tests.testkit.Gate`.
Each gated phase reports progress 50 % before it waits, and ``wk.stubborn`` ignores cancellation
(it writes ``cancel-ignored`` and keeps waiting), as testkit's ``stubborn`` does in-process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jobwire.worker import JobContext, Kind, MalformedPayload, PermanentError

CANCEL_IGNORED = "cancel-ignored"


async def _gate(ctx: JobContext, *, stubborn: bool = False) -> bytes:
    spec: Any = ctx.json()
    if not isinstance(spec, dict) or not isinstance(spec.get("port"), int):
        raise MalformedPayload('gate payload must be JSON like {"port": 4242}')
    reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"])
    try:
        await ctx.progress(50.0, f"{ctx.phase} half way")
        hello = {"job": ctx.job_id, "kind": ctx.kind, "phase": ctx.phase, "attempt": ctx.attempt,
                 "results": sorted(ctx.results)}
        writer.write(json.dumps(hello).encode() + b"\n")
        await writer.drain()
        while True:
            try:
                byte = await reader.read(1)
                break
            except asyncio.CancelledError:
                if not stubborn:
                    raise
                writer.write(CANCEL_IGNORED.encode() + b"\n")
                await writer.drain()
        if byte == b".":
            return json.dumps({"phase": ctx.phase, "attempt": ctx.attempt, "results": sorted(ctx.results)}).encode()
        if byte == b"r":
            raise RuntimeError(f"gate told phase {ctx.phase} to fail")
        raise PermanentError(f"gate told phase {ctx.phase} to fail permanently" if byte == b"p" else "gate closed")
    finally:
        writer.close()


three = Kind("wk.three", max_attempts=3)


@three.phase("fetch")
async def three_fetch(ctx: JobContext) -> bytes:
    return await _gate(ctx)


@three.phase("resize")
async def three_resize(ctx: JobContext) -> bytes:
    return await _gate(ctx)


@three.phase("upload")
async def three_upload(ctx: JobContext) -> bytes:
    return await _gate(ctx)


stubborn = Kind("wk.stubborn", max_attempts=1)


@stubborn.phase("run")
async def stubborn_run(ctx: JobContext) -> bytes:
    return await _gate(ctx, stubborn=True)


noop = Kind("wk.noop", max_attempts=1)


@noop.phase("run")
async def noop_run(ctx: JobContext) -> bytes:
    return ctx.payload
