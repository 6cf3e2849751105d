"""Requests and load of the serving benchmarks: v2 payloads, wrk for REST, grpc.aio load generators."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving_proc import HOST, MODEL, PLATFORM_PY, ROOT, Server, cpu_seconds, pin

# --------------------------------------------------------------------------------------------- payloads


def tensor_request(inputs: Any, batch: int, request_id: str = "bench") -> tuple[bytes, bytes]:
    """(v2 JSON body, serialized gRPC ModelInferRequest) for ``batch`` rows of MODEL_INPUTS."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS
    from relearn.serving.tensors import v2_json

    rows = inputs.iloc[:batch]
    numeric = np.nan_to_num(rows[list(NUMERIC_INPUTS)].to_numpy(np.float32), nan=0.0)
    categorical = rows[list(CATEGORICAL_INPUTS)].astype(str).to_numpy()
    body = v2_json(
        [
            ("numeric", "FP32", numeric.shape, numeric),
            ("categorical", "BYTES", categorical.shape, categorical),
        ],
        request_id,
    )
    request = pb.ModelInferRequest(model_name=MODEL, id=request_id)
    t = request.inputs.add(name="numeric", datatype="FP32", shape=list(numeric.shape))
    t.contents.fp32_contents.extend(numeric.ravel().tolist())
    t = request.inputs.add(name="categorical", datatype="BYTES", shape=list(categorical.shape))
    t.contents.bytes_contents.extend(v.encode() for v in categorical.ravel())
    return json.dumps(body).encode(), request.SerializeToString()


def transaction_request(raw: Any, batch: int, request_id: str = "bench") -> tuple[bytes, bytes]:
    """(v2 JSON body, serialized gRPC request) of ``batch`` raw transactions: one input per request field."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from relearn.data.schema import REQUEST_FIELDS

    rows = raw.iloc[:batch]
    inputs, request = [], pb.ModelInferRequest(model_name=MODEL, id=request_id)
    for name in REQUEST_FIELDS:
        column = rows[name]
        t = request.inputs.add(name=name, shape=[batch])
        if name == "amount":
            values = column.astype(float).tolist()
            inputs.append({"name": name, "datatype": "FP64", "shape": [batch], "data": values})
            t.datatype = "FP64"
            t.contents.fp64_contents.extend(values)
        else:
            if name == "event_timestamp":
                values = [v.isoformat() for v in column]
            else:
                values = column.astype(str).tolist()
            inputs.append({"name": name, "datatype": "BYTES", "shape": [batch], "data": values})
            t.datatype = "BYTES"
            t.contents.bytes_contents.extend(v.encode() for v in values)
    body = {"id": request_id, "inputs": inputs}
    return json.dumps(body).encode(), request.SerializeToString()


WRK_SCRIPT = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


# --------------------------------------------------------------------------------------------- targets


@dataclass(eq=False)
class Target:
    """Something to load: servers (whose CPU counts), ports, and the request kind it takes."""

    name: str
    servers: list[Server]
    http_port: int | None
    grpc_port: int | None
    model: str = MODEL
    payload: str = "tensor"  # or "transactions"
    helpers: list[Server] = field(default_factory=list)  # started with the target, CPU not counted
    cells: str = "all"  # or "goal": only batch 1, concurrency 8; "batches": every batch at concurrency 8
    pinned: bool = False  # measured on CPU 0 alone: see place()


def place(target: Target) -> list[str]:
    """Pin one cell's processes; the command prefix that puts a load generator beside the helpers.

    Pinned, the target's first server gets CPU 0 to itself (a pod with one CPU), and its other servers, its
    helpers (the payload-log sink) and the load generators share the other CPUs: on a 2-core machine a
    server's figures are then its own cost, not its contention with the load generator and the sink.
    """
    cpus = os.cpu_count() or 1
    if not target.pinned or cpus < 2:
        return []
    rest = set(range(1, cpus))
    pin(target.servers[0].proc.pid, {0})
    for server in [*target.servers[1:], *target.helpers]:
        pin(server.proc.pid, rest)
    return ["taskset", "-c", ",".join(map(str, sorted(rest)))]


@dataclass
class Cell:
    target: str
    protocol: str
    batch: int
    concurrency: int
    round: int
    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    rows_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu_us_per_req: float = float("nan")
    note: str = ""


def measure_rest(target: Target, batch: int, concurrency: int, duration: float, work: Path, rnd: int) -> Cell:
    body_path = work / f"{target.payload}-{batch}.json"
    script = work / f"{target.payload}-{batch}.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT.replace("{body}", str(body_path)))
    url = f"http://{HOST}:{target.http_port}/v2/models/{target.model}/infer"
    threads = min(2, concurrency)
    cmd = [
        *place(target),
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{duration}s",
        "--latency",
        "-s",
        str(script),
    ]
    pids = [p for s in target.servers for p in s.pids()]
    cpu0 = cpu_seconds(pids)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 30, check=False)
    cpu1 = cpu_seconds(pids)
    cell = Cell(target.name, "rest", batch, concurrency, rnd)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        cell.note = f"wrk failed: {(out.stderr + out.stdout).strip()[:200]}"
        return cell
    requests, duration_us, socket_errors, status_errors, p50, p99, _mean, _max = map(float, line.split()[1:])
    ok = requests - status_errors
    cell.requests, cell.errors = int(requests), int(socket_errors + status_errors)
    cell.rps = ok / (duration_us / 1e6)
    cell.rows_per_s = cell.rps * batch
    cell.p50_ms, cell.p99_ms = p50 / 1000, p99 / 1000
    cell.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / max(requests, 1)
    return cell


def measure_grpc(target: Target, batch: int, concurrency: int, duration: float, work: Path, rnd: int) -> Cell:
    payload = work / f"{target.payload}-{batch}.bin"
    processes = 1 if concurrency == 1 else 2
    per_process = [
        concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)
    ]
    outs = [work / f"grpc-{target.name}-{batch}-{concurrency}-{i}.json" for i in range(processes)]
    procs, prefix = [], place(target)
    for i, m in enumerate(per_process):
        cmd = [
            *prefix, PLATFORM_PY, "-m", "benchmarks.serving_loadgen",
            "--target", f"{HOST}:{target.grpc_port}",
            "--payload", str(payload), "--concurrency", str(m), "--duration", str(duration),
            "--out", str(outs[i]),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    cell = Cell(target.name, "grpc", batch, concurrency, rnd)
    try:
        for proc in procs:  # each says "ready" after connecting and warming up
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"load generator did not start: {line!r}")
        pids = [p for s in target.servers for p in s.pids()]
        start_at = time.time() + 0.05
        for proc in procs:
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = cpu_seconds(pids)
        time.sleep(max(0.0, start_at + duration - time.time()))
        cpu1 = cpu_seconds(pids)
        for proc in procs:
            proc.wait(timeout=duration + 30)
    except Exception as error:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cell.note = f"loadgen failed: {error}"[:200]
        return cell
    latencies, requests, errors, first_error = [], 0, 0, ""
    for out in outs:
        result = json.loads(out.read_text())
        latencies += result["latencies_us"]
        requests += result["requests"]
        errors += result["errors"]
        first_error = first_error or result["first_error"]
    cell.requests, cell.errors, cell.note = requests, errors, first_error
    cell.rps = len(latencies) / duration
    cell.rows_per_s = cell.rps * batch
    if latencies:
        cell.p50_ms, cell.p99_ms = (float(x) / 1000 for x in np.percentile(latencies, [50, 99]))
    cell.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / max(requests, 1)
    return cell
