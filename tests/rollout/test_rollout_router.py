"""The local router with real processes: echo servers (REST + gRPC v2) behind the router, on loopback.

Weights are changed at run time through the LocalBackend's state file; the router re-reads it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from relearn.demo.stack import free_port
from relearn.rollout.backend import RolloutBackend, RolloutError, RolloutState
from relearn.rollout.echo import v2_pb2
from relearn.rollout.local_backend import LocalBackend
from relearn.rollout.router import ROUTE_HEADER
from relearn.serving.metrics import shadow_host, track_of

N = 300
# Weighted random per request: 4 standard deviations of a binomial share, in percentage points.
TOL = lambda p: 4 * 100 * (p * (1 - p) / N) ** 0.5  # noqa: E731


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"process exited: {p.args}"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


class Stack:
    """Echo servers stable/canary/shadow/broken + the router, all real processes."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state.json"
        self.backend = LocalBackend(self.state)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.rest: dict[str, str] = {}
        for name in ("stable", "canary", "shadow", "broken"):
            rest, grpc_port = free_port(), free_port()
            args = ["--name", name, "--rest-port", str(rest), "--grpc-port", str(grpc_port)]
            args += ["--fail"] if name == "broken" else []
            self.procs.append(subprocess.Popen([sys.executable, "-m", "relearn.rollout.echo", *args]))
            self.rest[name] = f"http://127.0.0.1:{rest}"
            self.backend.register(name, rest=self.rest[name], grpc=f"127.0.0.1:{grpc_port}")
        rest, grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "relearn.rollout.router", "--state", str(self.state), "--seed", "7"]
        cmd += ["--rest-port", str(rest), "--grpc-port", str(grpc_port)]
        self.procs.append(subprocess.Popen(cmd))
        self.url = f"http://127.0.0.1:{rest}"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        pb = v2_pb2()
        self.pb = pb
        self.infer = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for url in [*self.rest.values(), self.url]:
            _wait_ready(f"{url}/v2/health/ready", self.procs)
        grpc.channel_ready_future(self.channel).result(timeout=30)

    def close(self) -> None:
        self.channel.close()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def counts(self) -> dict[str, dict[str, int]]:
        return {n: httpx.get(f"{u}/count", timeout=5).json() for n, u in self.rest.items()}

    def rest_round(self, n: int = N) -> Counter[str]:
        seen: Counter[str] = Counter()
        body = {"id": "r", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}]}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for _ in range(n):
                r = client.post("/v2/models/relearn-fraud/infer", json=body)
                assert r.status_code == 200, r.text
                assert r.json()["model_name"] == "relearn-fraud"
                seen[r.json()["outputs"][0]["data"][0]] += 1
                assert r.headers[ROUTE_HEADER] in ("stable", "canary")
        return seen

    def grpc_round(self, n: int = N) -> Counter[str]:
        seen: Counter[str] = Counter()
        request = self.pb.ModelInferRequest(model_name="relearn-fraud", id="g")
        for _ in range(n):
            response = self.infer(request, timeout=10)
            assert response.model_name == "relearn-fraud" and response.id == "g"
            seen[response.outputs[0].contents.bytes_contents[0].decode()] += 1
        return seen

    def settle(self, name: str, expected_min: int, timeout: float = 10.0) -> dict[str, int]:
        """Mirrors are fire and forget: wait (bounded) until ``name`` has seen ``expected_min`` requests."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.counts()[name]
            if c["rest"] + c["grpc"] >= expected_min or time.monotonic() > deadline:
                time.sleep(0.3)  # let late mirrors land before the exact count is read
                return self.counts()[name]
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("router"))
    try:
        yield s
    finally:
        s.close()


def _share(seen: Counter[str], name: str) -> float:
    return 100 * seen[name] / sum(seen.values())


def test_local_backend_is_a_rollout_backend(stack: Stack) -> None:
    assert isinstance(stack.backend, RolloutBackend)
    assert stack.backend.state() == RolloutState(stable="stable")
    with pytest.raises(RolloutError):
        stack.backend.start_canary("unknown", 10)
    with pytest.raises(RolloutError):
        stack.backend.promote()


def test_canary_split_rest_and_grpc(stack: Stack) -> None:
    assert stack.rest_round(20) == Counter(stable=20)
    stack.backend.start_canary("canary", 25)
    rest, rpc = stack.rest_round(), stack.grpc_round()
    for seen in (rest, rpc):
        assert set(seen) <= {"stable", "canary"}
        assert abs(_share(seen, "canary") - 25) <= TOL(0.25), seen
    stack.backend.set_canary_percent(50)
    assert abs(_share(stack.grpc_round(), "canary") - 50) <= TOL(0.5)
    stack.backend.rollback()
    assert stack.rest_round(50) == Counter(stable=50) and stack.grpc_round(50) == Counter(stable=50)


def test_mirror_gets_its_share_and_never_answers(stack: Stack) -> None:
    before = stack.counts()["shadow"]
    stack.backend.start_shadow("shadow", 40)
    rest, rpc = stack.rest_round(), stack.grpc_round()
    assert "shadow" not in rest and "shadow" not in rpc, "mirror responses are discarded"
    after = stack.settle("shadow", int(0.4 * N * 2 * 0.7))
    for proto in ("rest", "grpc"):
        share = 100 * (after[proto] - before[proto]) / N
        assert abs(share - 40) <= TOL(0.4), (proto, share)
        # Marked as Istio marks mirrors (a "-shadow" Host / authority): the servers count them apart.
        assert after[f"{proto}_mirror"] - before[f"{proto}_mirror"] == after[proto] - before[proto]
    assert stack.counts()["stable"]["rest_mirror"] == stack.counts()["stable"]["grpc_mirror"] == 0
    stack.backend.stop_shadow()
    mid = stack.counts()["shadow"]
    stack.rest_round(30)
    assert stack.counts()["shadow"] == mid


def test_failing_shadow_never_fails_the_client(stack: Stack) -> None:
    stack.backend.start_shadow("broken", 100)
    # Every request is mirrored to a server that fails them all; the clients see only successes.
    assert stack.rest_round(100) == Counter(stable=100)
    assert stack.grpc_round(100) == Counter(stable=100)
    seen = stack.settle("broken", 200)
    assert seen["rest"] >= 100 and seen["grpc"] >= 100
    stack.backend.stop_shadow()


def test_failing_canary_errors_pass_through_and_promote(stack: Stack) -> None:
    stack.backend.start_canary("broken", 100)
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        r = client.post("/v2/models/relearn-fraud/infer", json={"inputs": []})
    assert r.status_code == 500 and r.headers[ROUTE_HEADER] == "canary"
    with pytest.raises(grpc.RpcError) as err:
        stack.infer(stack.pb.ModelInferRequest(model_name="relearn-fraud"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL and "broken fails" in err.value.details()
    stack.backend.rollback()
    stack.backend.start_canary("canary", 10)
    state = stack.backend.promote()
    assert state == RolloutState(stable="canary")
    assert stack.rest_round(30) == Counter(canary=30) and stack.grpc_round(30) == Counter(canary=30)


def test_shadow_host_and_track_follow_envoy() -> None:
    """Envoy inserts ``-shadow`` before the port of a mirrored request's Host; servers read it back."""
    assert (
        shadow_host("relearn-fraud.relearn.svc.cluster.local:80")
        == "relearn-fraud.relearn.svc.cluster.local-shadow:80"
    )
    assert shadow_host("svc") == "svc-shadow" and shadow_host("[::1]:8080") == "[::1]-shadow:8080"
    assert track_of({"host": shadow_host("127.0.0.1:8080")}) == "mirror"
    assert track_of({":authority": "svc-shadow"}) == "mirror"
    for headers in ({"host": "svc:80"}, {"host": "shadow-svc"}, {}, None):
        assert track_of(headers) == "primary", headers


def test_router_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relearn.rollout.router", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "--state" in out.stdout
