"""relearn.listeners: REST and gRPC side by side, and a SIGTERM at any moment stops both cleanly.

Checked on a real process (the echo model server, which serves through the helper): the kubelet's
SIGTERM comes at any time, including while the process is still starting.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx

from relearn.rollout.echo import v2_pb2
from support.serving_stack import free_port, wait_until


def _echo(tmp_path: Path) -> tuple[subprocess.Popen, int, int, Path]:
    rest, grpc_port = free_port(), free_port()
    log = tmp_path / "echo.log"
    cmd = [sys.executable, "-m", "relearn.rollout.echo", "--name", "e"]
    cmd += ["--rest-port", str(rest), "--grpc-port", str(grpc_port)]
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return process, rest, grpc_port, log


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sigterm_stops_both_listeners_and_the_process_exits_0(tmp_path: Path) -> None:
    process, rest, grpc_port, log = _echo(tmp_path)
    try:
        url = f"http://127.0.0.1:{rest}/v2/health/ready"
        wait_until("echo", lambda: httpx.get(url).status_code == 200, process, log, 60, (httpx.HTTPError,))
        pb = v2_pb2()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            assert live(pb.ServerLiveRequest(), timeout=10).live
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
        assert _closed(rest) and _closed(grpc_port)
    finally:
        process.kill()


def test_a_sigterm_during_start_up_is_not_lost() -> None:
    """A stop that lands before uvicorn captures signals (here: while gRPC starts) still ends the serve,
    the listeners drain and the owner's cleanups run; a handler that ignored it would serve forever."""
    import asyncio
    import os

    from starlette.applications import Starlette

    from relearn import listeners

    class SignalledWhileStarting:  # the real gRPC server; the kubelet's SIGTERM arrives as it starts
        def __init__(self, server: object) -> None:
            self.server, self.stopped = server, False

        async def start(self) -> None:
            await self.server.start()
            os.kill(os.getpid(), signal.SIGTERM)

        async def stop(self, grace: float) -> None:
            await self.server.stop(grace)
            self.stopped = True

    cleaned: list[bool] = []

    async def cleanup() -> None:
        cleaned.append(True)

    rest, grpc_port = free_port(), free_port()
    servers: list[SignalledWhileStarting] = []

    async def main() -> None:  # grpc.aio servers belong to the loop they are made in
        servers.append(SignalledWhileStarting(listeners.grpc_listener("127.0.0.1", grpc_port, [])))
        serving = listeners.serve(
            Starlette(), servers[0], host="127.0.0.1", rest_port=rest, grace_seconds=0.5, cleanups=[cleanup]
        )
        await asyncio.wait_for(serving, timeout=15)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert servers[0].stopped and cleaned == [True]
    assert _closed(rest) and _closed(grpc_port)
