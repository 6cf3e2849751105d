"""State-side parts of ``benchmarks.features``: a loopback Redis, update rate, latency, freshness."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving_proc import HOST, MODEL, free_port

BATCH = 2000  # events per OnlineState.add call, as relearn.features.backfill sends them


class RedisProcess:
    """``redis-server`` on a free loopback port with an AOF (``appendfsync everysec``, as the chart)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [shutil.which("redis-server") or "redis-server", "--bind", HOST, "--port", str(self.port)]
        cmd += ["--dir", str(self.directory), "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host=HOST, port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)


def _state(
    backend: str, home: Path | None, redis: RedisProcess, db: int = 0, path: Path | None = None
) -> Any:
    from relearn.features.state import StateSettings, open_state

    if backend == "redis":
        return open_state(StateSettings(backend="redis", redis_urls=redis.url(0)))
    return open_state(StateSettings(backend="sqlite", path=path or home / "online_state.db"))


def update_rate(transactions: Any, labels: Any, end: Any, sqlite_path: Path, redis: RedisProcess) -> dict:
    """``{backend: (transactions, seconds)}`` of adding the lake to a fresh state in batches of 2,000.

    Leaves Redis db 0 holding the lake (and its chargebacks): the Redis transformer's state.
    """
    from relearn.features.backfill import lake_events

    events, chargebacks = lake_events(transactions, labels, end)
    rates = {}
    for backend in ("sqlite", "redis"):
        state = _state(backend, None, redis, path=sqlite_path)
        try:
            start = time.perf_counter()
            for i in range(0, len(events), BATCH):
                state.add(events[i : i + BATCH])
            rates[backend] = (len(events), time.perf_counter() - start)
            state.backend.chargebacks(chargebacks)
        finally:
            state.close()
    return rates


def _events(rows: list[dict], cursor: Any, n: int, prefix: str) -> list[Any]:
    from relearn.features.state import Event

    start = cursor.take(n)
    return [
        Event(f"{prefix}-{i}", start + i * 1_000_000, str(r["user_id"]), str(r["merchant_id"]),
              float(r["amount"]), str(r["country"] or ""), str(r["device_id"] or ""))
        for i, r in enumerate(rows[i % len(rows)] for i in range(n))
    ]  # fmt: skip


def observe_latency(rows: list[dict], cursor: Any, home: Path, redis: RedisProcess, n: int) -> dict:
    """``{backend: (p50 ms, p99 ms)}`` of ``OnlineState.observe_async`` (the transformer's call) of one new
    transaction, wall clock, from an event loop; ``redis``: ``appendfsync everysec`` (the chart's default);
    ``redis-always``: the same server and data with ``appendfsync always`` (CONFIG SET, then back);
    ``redis-set``: a bare SET on the same server with ``always``, the disk's floor for an fsynced write."""
    import asyncio

    async def timed(state: Any, events: list[Any]) -> list[float]:
        times = []
        for i, event in enumerate(events):
            begin = time.perf_counter()
            await state.observe_async([event])
            if i >= 50:  # the first ones warm caches and connections up
                times.append(time.perf_counter() - begin)
        return times

    async def floor(n: int) -> list[float]:
        """One SET per call on the same server, fsync always: what any fsynced write costs on this disk."""
        from redis.asyncio import Redis

        client, times = Redis.from_url(redis.url(2)), []
        try:
            for i in range(n + 50):
                begin = time.perf_counter()
                await client.set(f"floor:{i}", b"x" * 64)
                if i >= 50:
                    times.append(time.perf_counter() - begin)
        finally:
            await client.aclose()
        return times

    def quantiles(times: list[float]) -> tuple[float, float]:
        p50, p99 = np.percentile(times, [50, 99]) * 1000
        return float(p50), float(p99)

    import redis as redis_client

    out = {}
    admin = redis_client.Redis(host=HOST, port=redis.port)
    for name in ("sqlite", "redis", "redis-always"):
        state = _state(name.split("-")[0], home, redis)
        admin.config_set("appendfsync", "always" if name == "redis-always" else "everysec")
        try:
            out[name] = quantiles(asyncio.run(timed(state, _events(rows, cursor, n + 50, f"latency-{name}"))))
        finally:
            state.close()
            admin.config_set("appendfsync", "everysec")  # as the chart runs it by default
    admin.config_set("appendfsync", "always")
    out["redis-set"] = quantiles(asyncio.run(floor(n)))
    admin.config_set("appendfsync", "everysec")
    admin.close()
    return out


def freshness(rows: list[dict], cursor: Any, home: Path, redis: RedisProcess, targets: dict, n: int) -> dict:
    """``{backend: (seen on the first read, requests, lag p50 ms, lag p99 ms)}``.

    A request goes through the transformer; as soon as it answers, another client of the same state (what
    another replica or the card's next request reads) reads the card just after the transaction, until the
    read shows it. The lag is from the answer to the end of that read: one read round trip when the update
    was already visible.
    """
    import grpc

    from benchmarks.features_loadgen import METHOD, requests
    from relearn.features.state import Event

    out = {}
    for backend in ("sqlite", "redis"):
        reader = _state(backend, home, redis)
        channel = grpc.insecure_channel(f"{HOST}:{targets[backend].grpc_port}")
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        lags, first = [], 0
        try:
            for i in range(n):
                row, t = rows[(7 * i) % len(rows)], cursor.take(1)
                call(requests([row], MODEL, f"fresh-{backend}-{i}", [t])[0], timeout=10)
                answered = time.perf_counter()
                probe = Event(f"probe-{i}", t + 1, str(row["user_id"]), str(row["merchant_id"]))
                reads = 1
                while reader.read([probe])[0]["user_last_txn_unix"] != t / 1_000_000 and reads < 10_000:
                    reads += 1
                lags.append(time.perf_counter() - answered)
                first += reads == 1
        finally:
            channel.close()
            reader.close()
        p50, p99 = np.percentile(lags, [50, 99]) * 1000
        out[backend] = (first, n, float(p50), float(p99))
    return out
