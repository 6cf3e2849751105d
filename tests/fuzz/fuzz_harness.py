"""The fuzz properties: one kept-alive connection per endpoint, checked after every case and after the run.

Per case: no 5xx (no INTERNAL/UNKNOWN/UNAVAILABLE/... over gRPC), and the connection is neither reset nor
closed by the server, so a broken response cannot hide: it poisons the next request, which names the case
before it. After the run: the endpoint still answers a valid request correctly; its counters moved only by
what it accepted; its logs hold no traceback and at most one WARNING (or worse) line per rejected request.
"""

from __future__ import annotations

import http.client
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.fuzz_stack import LogWatch

CASES = int(os.environ.get("RELEARN_FUZZ_CASES", "2000"))  # per endpoint; CI runs the default
FUZZ = settings(
    max_examples=CASES,
    derandomize=True,  # a fixed seed: the same cases in every run
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)
# A client error never looks like these: the server failed, crashed or dropped the call.
BROKEN = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass
class Tally:
    """What one endpoint's run sent and got."""

    name: str
    cases: int = 0
    accepted: int = 0
    scored: int = 0  # accepted requests that carried rows (not health or metadata calls)
    units: int = 0  # rows, records or events the accepted requests carried
    seconds: float = 0.0
    failures: int = 0  # cases that broke a property (Hypothesis replays the failing one while it shrinks)
    answers: Counter = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return self.cases - self.accepted


RESULTS: dict[str, Tally] = {}  # printed by conftest.py's terminal summary


@dataclass
class Endpoint:
    """What the after-run checks need of one endpoint.

    ``counters()`` reads the counters that must move only with accepted requests; ``expected(tally)`` is
    how far they moved; ``healthy()`` asserts a valid request still gets a correct answer.
    """

    name: str
    logs: list[Path]
    counters: Callable[[], dict[str, float]]
    expected: Callable[[Tally], dict[str, float]]
    healthy: Callable[[], None]


IDLE_SECONDS = 3.0  # uvicorn closes a connection idle for 5 s (timeout_keep_alive)


class Rest:
    """One kept-alive HTTP/1.1 connection (http.client: it sends exactly the bytes and headers given).

    Like any HTTP client's pool it reconnects after the connection sat idle longer than the server keeps
    it; during a fuzz run cases follow each other within milliseconds, so every case shares one connection.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.previous: Any = None
        self.used = time.monotonic()

    def post(self, path: str, case: Any) -> tuple[int, bytes]:
        """POST a :class:`~fuzz_strategies.Case` (its content type, if any, and its headers)."""
        headers = {"content-type": case.content_type} if case.content_type else {}
        return self.send("POST", path, case.body, {**headers, **dict(case.headers)})

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """The status and body; fails on a 5xx, a reset connection or one the server closes."""
        case = (method, path, body[:300], headers)
        if time.monotonic() - self.used > IDLE_SECONDS:
            self.conn.close()
            self.previous = None
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()  # the next request reconnects
            broken = f"connection broken: {exc!r} on {case}; the case before: {self.previous}"
            raise AssertionError(broken) from None
        self.previous, self.used = case, time.monotonic()
        assert response.status < 500, f"{response.status} {data[:500]!r} for {case}"
        assert not response.will_close, f"the server closed the connection after {case} ({response.status})"
        return response.status, data

    def close(self) -> None:
        self.conn.close()


class Grpc:
    """One channel (one HTTP/2 connection) with raw bytes in and out (identity serializers)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
        self.stubs: dict[str, Any] = {}

    def call(self, method: str, request: bytes, timeout: float = 30) -> tuple[grpc.StatusCode, bytes | None]:
        """The status code and the response bytes (None unless OK); fails on a broken call."""
        stub = self.stubs.get(method) or self.stubs.setdefault(method, self.channel.unary_unary(method))
        try:
            return grpc.StatusCode.OK, stub(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            assert code not in BROKEN, f"{code.name}: {exc.details()} for {method} {request[:300]!r}"
            return code, None

    def close(self) -> None:
        self.channel.close()


def fuzz(
    endpoint: Endpoint, cases: st.SearchStrategy, send: Callable[[Any], tuple[str, int | None]]
) -> Tally:
    """Run ``send`` on every case (it returns the answer and, if accepted, its units), then the checks."""
    tally = RESULTS[endpoint.name] = Tally(endpoint.name)
    watches = [LogWatch(path) for path in endpoint.logs]
    for watch in watches:
        watch.mark()
    before = endpoint.counters()
    started = time.perf_counter()

    @FUZZ
    @given(cases)
    def run(case: Any) -> None:
        tally.cases += 1
        try:
            answer, units = send(case)
        except AssertionError:
            tally.failures += 1
            raise
        tally.answers[answer] += 1
        if units is not None:
            tally.accepted += 1
            tally.scored += units > 0
            tally.units += units

    try:
        run()
    finally:
        tally.seconds = time.perf_counter() - started
    assert tally.cases >= CASES, f"{endpoint.name}: only {tally.cases} cases"
    after = endpoint.counters()
    moved = {name: after[name] - before.get(name, 0.0) for name in after}
    assert moved == endpoint.expected(tally), f"counters moved {moved} for {tally}"
    endpoint.healthy()
    logged = "".join(watch.since() for watch in watches)
    assert "Traceback" not in logged, logged[-3000:]
    warnings = LogWatch.warnings(logged)
    assert len(warnings) <= tally.rejected, f"{len(warnings)} warnings for {tally.rejected}: {warnings[:5]}"
    return tally
