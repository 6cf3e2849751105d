"""gRPC load generator of the serving benchmark: one process, M concurrent ``ModelInfer`` calls in a loop.

The request is pre-serialized (a ``ModelInferRequest`` in a file) and sent as raw bytes; the response is not
decoded, so the client spends its CPU on gRPC alone. The benchmark starts N of these processes; each connects,
warms up, prints ``ready`` and reads the common start time (epoch seconds) from stdin (or takes
``--start-at``); each one measures only calls that start inside
``[start_at, start_at + duration)`` and stops there (bounded also by ``--max-requests``).
It writes ``{"requests", "errors", "first_error", "latencies_us"}`` as JSON to ``--out``.

Usage: ``python -m benchmarks.serving_loadgen --target 127.0.0.1:G --payload req.bin --concurrency M
--duration S --out result.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def run(
    target: str, payload: bytes, concurrency: int, start_at: float, duration: float, max_requests: int
) -> dict[str, object]:
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        # Identity (de)serializers: bytes in, bytes out.
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for _ in range(3):  # warm the connection before the clock starts (errors are counted below)
            try:
                await call(payload, timeout=10)
            except grpc.aio.AioRpcError:
                break
        latencies: list[int] = []
        state = {"requests": 0, "errors": 0, "first_error": ""}
        if start_at <= 0:  # handshake: say "ready", read the common start time (epoch seconds) from stdin
            print("ready", flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            start_at = float(line)
        end = start_at + duration
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def worker() -> None:
            perf = time.perf_counter_ns
            while time.time() < end and state["requests"] < max_requests:
                state["requests"] += 1
                begin = perf()
                try:
                    await call(payload, timeout=30)
                except grpc.aio.AioRpcError as error:
                    state["errors"] += 1
                    if not state["first_error"]:
                        state["first_error"] = f"{error.code().name}: {error.details()}"[:300]
                    continue
                latencies.append((perf() - begin) // 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {**state, "latencies_us": latencies}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_loadgen", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--payload", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--start-at", type=float, default=0.0, help="Epoch seconds to start (default: ready/stdin handshake)."
    )
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(
            args.target,
            args.payload.read_bytes(),
            args.concurrency,
            args.start_at,
            args.duration,
            args.max_requests,
        )
    )
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
