"""gRPC load generator of the online-feature benchmark: every call is a new transaction.

``benchmarks.serving_loadgen`` repeats one request; here that would be one transaction served again and
again (the state's idempotent path). This one builds ``--count`` distinct transformer requests before the
clock starts — a template row with a fresh ``transaction_id`` and an event time ``start + (i * stride +
offset) * step`` µs, so processes interleave in event time — and sends each at most once, M concurrent
calls at a time. Handshake and output are those of ``benchmarks.serving_loadgen`` (``ready`` on stdout,
start time on stdin; ``{"requests", "errors", "first_error", "latencies_us", "exhausted"}`` in ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

METHOD = "/inference.GRPCInferenceService/ModelInfer"
FIELDS = ("transaction_id", "event_timestamp", "user_id", "merchant_id", "amount", "currency")
FIELDS += ("merchant_category", "channel", "country", "device_id")


def requests(template: list[dict], model: str, prefix: str, times_us: list[int]) -> list[bytes]:
    """Serialized v2 ``ModelInferRequest``s, one transaction each (one input per request field)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    out = []
    for i, t in enumerate(times_us):
        row = {**template[i % len(template)], "transaction_id": f"{prefix}-{i}"}
        row["event_timestamp"] = (epoch + timedelta(microseconds=t)).isoformat()
        request = pb.ModelInferRequest(model_name=model, id=f"{prefix}-{i}")
        for name in FIELDS:
            tensor = request.inputs.add(name=name, shape=[1])
            if name == "amount":
                tensor.datatype = "FP64"
                tensor.contents.fp64_contents.append(float(row[name]))
            else:
                tensor.datatype = "BYTES"
                tensor.contents.bytes_contents.append(str(row[name] or "").encode())
        out.append(request.SerializeToString())
    return out


async def run(target: str, payloads: list[bytes], concurrency: int, duration: float) -> dict[str, object]:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        start_at = float(line)
        end = start_at + duration
        await asyncio.sleep(max(0.0, start_at - time.time()))
        latencies: list[int] = []
        state = {"requests": 0, "errors": 0, "first_error": "", "exhausted": False}
        queue = iter(payloads)

        async def worker() -> None:
            perf = time.perf_counter_ns
            while time.time() < end:
                payload = next(queue, None)
                if payload is None:  # never resend: a repeated transaction is the cheap idempotent path
                    state["exhausted"] = True
                    return
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.features_loadgen", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--template", type=Path, required=True, help="JSON list of transaction rows.")
    parser.add_argument("--model", default="relearn-fraud")
    parser.add_argument("--prefix", required=True, help="Transaction id prefix (unique per process).")
    parser.add_argument("--start-us", type=int, required=True)
    parser.add_argument("--step-us", type=int, default=1_000_000)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    times = [args.start_us + (i * args.stride + args.offset) * args.step_us for i in range(args.count)]
    payloads = requests(json.loads(args.template.read_text()), args.model, args.prefix, times)
    result = asyncio.run(run(args.target, payloads, args.concurrency, args.duration))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
