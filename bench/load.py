"""The load-generating client, run as its own process (`python -m bench.load SPEC`).

The bench hosts the server in its own process and starts this client beside it, so client and
server each get a core, as real users would. The client speaks gRPC through the generated stubs
(`jobwire.v1`) with grpc.aio. SPEC is a JSON object; the result is one JSON line on stdout.

Modes:

``unary``  Enqueue (or the echo floor's Echo, with the same request bytes) with `inflight` calls
           in flight for `seconds` after `warmup` seconds: calls/s, call latency percentiles, and
           the perf_counter times of the first send and the last reply (CLOCK_MONOTONIC, which
           the server process shares on Linux).
``batch``  EnqueueBatch of `size` requests, `calls` times, one call in flight: jobs/s.
``watch``  Open `streams` server streams (WatchJob, or the echo floor's Watch) over `channels`
           connections, wait for each stream's first message, print ``{"ready": ...}``, then record
           when each stream's next message arrives and print the receipt times.
``bulk``   Fill queue `queue` with `jobs` SCHEDULED jobs, then keep `clients` callers enqueueing
           (into another queue): for `baseline` seconds alone, then while one CancelJobs cancels the
           queue's jobs. The enqueue latency percentiles of both phases, and what the cancel took.
``events`` Open one WatchEvents stream (filtered by `queues`, `kinds`, `types`) on each of
           `targets`, print ``{"ready": ...}``, then one line per event as it arrives: the stream's
           index, the job id, the event type and the receipt time; for `timeout` seconds at most
           (the bench ends it sooner).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio
from jobwire.v1 import jobwire_pb2

ENQUEUE = "/jobwire.v1.JobService/Enqueue"
ENQUEUE_BATCH = "/jobwire.v1.JobService/EnqueueBatch"
CANCEL_JOBS = "/jobwire.v1.JobService/CancelJobs"
WATCH_JOB = "/jobwire.v1.JobService/WatchJob"
WATCH_EVENTS = "/jobwire.v1.JobService/WatchEvents"
ECHO = "/bench.Echo/Echo"
ECHO_WATCH = "/bench.Echo/Watch"
#: Streams opened at once while building up a fan-out (the rest wait their turn).
OPEN_WAVE = 500


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _channel(target: str, index: int = 0) -> aio.Channel:
    # A local subchannel pool gives each channel its own connection (they would share one otherwise).
    return aio.insecure_channel(target, options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.channel_index", index),
        ("grpc.max_receive_message_length", 64 << 20)])


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def enqueue_request() -> jobwire_pb2.EnqueueRequest:
    return jobwire_pb2.EnqueueRequest(kind="noop", payload=b"x")


async def run_unary(spec: dict[str, Any]) -> dict[str, Any]:
    inflight, seconds, warmup = int(spec["inflight"]), float(spec["seconds"]), float(spec.get("warmup", 0.0))
    request = enqueue_request()
    async with _channel(spec["target"]) as channel:
        call: Callable[..., Any]
        if spec["method"] == "echo":
            call = channel.unary_unary(ECHO, request_serializer=jobwire_pb2.EnqueueRequest.SerializeToString,
                                       response_deserializer=jobwire_pb2.EnqueueRequest.FromString)
        else:
            call = channel.unary_unary(ENQUEUE, request_serializer=jobwire_pb2.EnqueueRequest.SerializeToString,
                                       response_deserializer=jobwire_pb2.EnqueueResponse.FromString)
        await channel.channel_ready()
        begin = time.perf_counter()
        window_start, window_end = begin + warmup, begin + warmup + seconds
        latencies: list[float] = []
        counted = ok = errors = 0
        first_send, last_reply = 0.0, 0.0

        async def worker() -> None:
            nonlocal counted, ok, errors, first_send, last_reply
            while (sent := time.perf_counter()) < window_end:
                if not first_send:
                    first_send = sent
                try:
                    await call(request, timeout=30)
                except grpc.RpcError:
                    errors += 1
                    continue
                done = time.perf_counter()
                ok += 1
                last_reply = max(last_reply, done)
                if window_start <= sent and done <= window_end:
                    counted += 1
                    latencies.append(done - sent)

        await asyncio.gather(*(worker() for _ in range(inflight)))
    return {"calls": counted, "seconds": seconds, "rate": counted / seconds, "ok": ok, "errors": errors,
            "p50_ms": _percentile(latencies, 0.5) * 1000, "p99_ms": _percentile(latencies, 0.99) * 1000,
            "first_send": first_send, "last_reply": last_reply}


async def run_batch(spec: dict[str, Any]) -> dict[str, Any]:
    size, calls, warmup = int(spec["size"]), int(spec["calls"]), int(spec.get("warmup_calls", 1))
    batch = jobwire_pb2.EnqueueBatchRequest(requests=[enqueue_request() for _ in range(size)])
    async with _channel(spec["target"]) as channel:
        call = channel.unary_unary(ENQUEUE_BATCH,
                                   request_serializer=jobwire_pb2.EnqueueBatchRequest.SerializeToString,
                                   response_deserializer=jobwire_pb2.EnqueueBatchResponse.FromString)
        await channel.channel_ready()
        for _ in range(warmup):
            await call(batch, timeout=60)
        latencies = []
        started = time.perf_counter()
        for _ in range(calls):
            sent = time.perf_counter()
            response = await call(batch, timeout=60)
            latencies.append(time.perf_counter() - sent)
            if len(response.responses) != size:
                raise RuntimeError(f"EnqueueBatch answered {len(response.responses)} of {size}")
        elapsed = time.perf_counter() - started
    return {"jobs": size * calls, "seconds": elapsed, "rate": size * calls / elapsed,
            "p50_ms": _percentile(latencies, 0.5) * 1000}


async def run_watch(spec: dict[str, Any]) -> dict[str, Any]:
    streams, channels, limit = int(spec["streams"]), int(spec["channels"]), float(spec["timeout"])
    path = WATCH_JOB if spec["method"] == "watch_job" else ECHO_WATCH
    request = jobwire_pb2.WatchJobRequest(id=spec["job_id"])
    opened = asyncio.Semaphore(OPEN_WAVE)
    first_seen: list[asyncio.Future[None]] = []
    receipts: list[float] = []
    errors: dict[str, int] = {}
    sample = b""

    async def watch(channel: aio.Channel, ready: asyncio.Future[None]) -> None:
        nonlocal sample
        call = channel.unary_stream(path, request_serializer=jobwire_pb2.WatchJobRequest.SerializeToString,
                                    response_deserializer=jobwire_pb2.JobEvent.FromString)
        try:
            async with opened:
                stream = call(request)
                first = await stream.read()
            if first is aio.EOF:
                errors["EOF"] = errors.get("EOF", 0) + 1
                return
            ready.set_result(None)
            event = await stream.read()
            if isinstance(event, jobwire_pb2.JobEvent):
                receipts.append(time.perf_counter())
                if not sample:
                    sample = event.SerializeToString()
        except aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        except Exception as exc:  # report, don't hang: the bench reads the count
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            if not ready.done():
                ready.set_result(None)

    pool = [_channel(spec["target"], i) for i in range(channels)]
    try:
        for channel in pool:
            await asyncio.wait_for(channel.channel_ready(), 10)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        tasks = []
        for i in range(streams):
            ready: asyncio.Future[None] = loop.create_future()
            first_seen.append(ready)
            tasks.append(asyncio.create_task(watch(pool[i % channels], ready)))
        await asyncio.wait_for(asyncio.gather(*first_seen), limit)
        _emit({"ready": True, "open_seconds": time.perf_counter() - started, "errors": dict(errors)})
        await asyncio.wait_for(asyncio.gather(*tasks), limit)
    finally:
        for channel in pool:
            await channel.close(None)
    return {"receipts": receipts, "errors": errors, "sample": sample.hex()}


async def run_events(spec: dict[str, Any]) -> dict[str, Any]:
    request = jobwire_pb2.WatchEventsRequest(
        queues=spec.get("queues", []), kinds=spec.get("kinds", []),
        types=[jobwire_pb2.EventType.Value(f"EVENT_TYPE_{name}") for name in spec.get("types", [])])
    received = [0] * len(spec["targets"])

    async def watch(index: int, channel: aio.Channel) -> None:
        call = channel.unary_stream(WATCH_EVENTS, request_serializer=jobwire_pb2.WatchEventsRequest.SerializeToString,
                                    response_deserializer=jobwire_pb2.JobEvent.FromString)
        async for event in call(request):
            at = time.perf_counter()
            received[index] += 1
            _emit({"stream": index, "job_id": event.job_id, "type": jobwire_pb2.EventType.Name(event.type)[11:],
                   "at": at})

    pool = [_channel(target, i) for i, target in enumerate(spec["targets"])]
    try:
        for channel in pool:
            await asyncio.wait_for(channel.channel_ready(), 10)
        tasks = [asyncio.create_task(watch(i, channel)) for i, channel in enumerate(pool)]
        _emit({"ready": True})
        done, _ = await asyncio.wait(tasks, timeout=float(spec["timeout"]), return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a stream that failed is the result
        for task in tasks:
            task.cancel()
    finally:
        for channel in pool:
            await channel.close(None)
    return {"received": received}


async def run_bulk(spec: dict[str, Any]) -> dict[str, Any]:
    queue, jobs, clients, baseline = spec["queue"], int(spec["jobs"]), int(spec["clients"]), float(spec["baseline"])
    waiting = jobwire_pb2.EnqueueRequest(kind="noop", queue=queue, delay={"seconds": 86_400})
    async with _channel(spec["target"]) as channel:
        enqueue = channel.unary_unary(ENQUEUE, request_serializer=jobwire_pb2.EnqueueRequest.SerializeToString,
                                      response_deserializer=jobwire_pb2.EnqueueResponse.FromString)
        batch = channel.unary_unary(ENQUEUE_BATCH, request_serializer=jobwire_pb2.EnqueueBatchRequest.SerializeToString,
                                    response_deserializer=jobwire_pb2.EnqueueBatchResponse.FromString)
        cancel = channel.unary_unary(CANCEL_JOBS, request_serializer=jobwire_pb2.CancelJobsRequest.SerializeToString,
                                     response_deserializer=jobwire_pb2.CancelJobsResponse.FromString)
        await channel.channel_ready()
        for start in range(0, jobs, 1000):
            await batch(jobwire_pb2.EnqueueBatchRequest(requests=[waiting] * min(1000, jobs - start)), timeout=60)
        other = jobwire_pb2.EnqueueRequest(kind="noop", queue=f"{queue}-other", delay={"seconds": 86_400})
        phase: list[float] | None = None
        done = False

        async def worker() -> None:
            while not done:
                sent = time.perf_counter()
                samples = phase
                await enqueue(other, timeout=30)
                if samples is not None:  # counted in the phase it was sent in
                    samples.append(time.perf_counter() - sent)

        workers = [asyncio.create_task(worker()) for _ in range(clients)]
        await asyncio.sleep(0.5)  # warm up
        phase = alone = []
        await asyncio.sleep(baseline)
        phase = during = []
        started = time.perf_counter()
        reply = await cancel(jobwire_pb2.CancelJobsRequest(filter=jobwire_pb2.JobFilter(queue=queue)), timeout=600)
        seconds = time.perf_counter() - started
        phase, done = None, True
        await asyncio.gather(*workers)
    return {"changed": reply.changed, "matched": reply.matched, "cancel_seconds": seconds,
            "alone": len(alone), "alone_p50_ms": _percentile(alone, 0.5) * 1000,
            "alone_p99_ms": _percentile(alone, 0.99) * 1000, "during": len(during),
            "during_p50_ms": _percentile(during, 0.5) * 1000, "during_p99_ms": _percentile(during, 0.99) * 1000,
            "during_max_ms": max(during, default=0.0) * 1000}


MODES = {"unary": run_unary, "batch": run_batch, "watch": run_watch, "events": run_events, "bulk": run_bulk}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = asyncio.run(MODES[spec["mode"]](spec))
    except Exception as exc:
        _emit({"error": f"{type(exc).__name__}: {exc or 'no detail'}"})
        raise SystemExit(1) from None
    _emit(result)


if __name__ == "__main__":
    main()
