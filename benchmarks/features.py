"""``python -m benchmarks.features`` (``make bench-features``): the online feature path, side by side.

One run trains a champion (or takes ``--home``), starts a predictor, three transformers in front of it —
the current code on the SQLite default state, the current code on a loopback Redis state (Debian
``redis-server``, fsynced AOF as the chart runs it) and the release before (``--before``, 1c294d2: Feast
online store, checked out in a git worktree and run with this venv) — and measures, in interleaved rounds:

* CPU per one-row request of each transformer process and of the predictor serving it (v2 gRPC, batch 1,
  concurrency 8; every request a new transaction, ``benchmarks.features_loadgen``), and requests/s per
  replica; the predictor alone as reference;
* the feature path (``OnlineState.observe``, batch 1) p50/p99 on both backends and its share of the
  end-to-end p99 (the same transformer at concurrency 1);
* freshness: after the transformer answers, how long until another client's read shows the transaction;
* state updates per second per process (``OnlineState.add`` in batches of 2,000: the bootstrap path).

Prints one table (benchmarks.table) and, with ``--json``, writes it there. Aims are the issue's; a miss is
reported, never an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.features_state import RedisProcess, freshness, observe_latency, update_rate
from benchmarks.serving import prepare_home
from benchmarks.serving_measure import Target, measure_grpc, tensor_request
from benchmarks.serving_proc import HOST, MODEL, PLATFORM_PY, ROOT, Server, cpu_seconds, free_port
from benchmarks.serving_report import median
from benchmarks.table import Row, render, write_json

warnings.filterwarnings("ignore", message='Field name "json" in "FeatureBenchSettings" shadows')
STEP_US = 1_000_000  # event time between two requests: a card every ~15 min, as in the lake
MAX_RPS = 2500  # transactions built per loadgen process = MAX_RPS x duration / processes (never resent)


class FeatureBenchSettings(BaseSettings):
    """Benchmark the transformer's online feature path against the predictor and the release before.

    Every option can also be set as RELEARN_BENCH_FEATURES_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_FEATURES_",
        cli_prog_name="python -m benchmarks.features",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    rounds: int = Field(3, ge=1, description="Rounds (every cell once per round); the table shows medians.")
    duration: int = Field(3, ge=1, le=60, description="Seconds of load per cell and round.")
    concurrency: int = Field(8, ge=1, description="Concurrent requests for the throughput cells.")
    quick: bool = Field(False, description="Fast check: 1 round of 2 s per cell, fewer latency samples.")
    before: str = Field("1c294d2", description="Commit of the release before (its transformer reads Feast).")
    skip_before: bool = Field(False, description="Do not run the release before.")
    home: Path | None = Field(
        None, description="RELEARN_HOME with a champion, its Feast store and state (default: train one)."
    )
    json: Path | None = Field(None, description="Also write the table as JSON to this file.")

    def cli_cmd(self) -> None:
        """Runs the benchmark and prints the table."""
        run(self)


class Cursor:
    """Event times handed out in increasing order: the stream clock never sees a late request."""

    def __init__(self, start_us: int) -> None:
        self.next_us = start_us

    def take(self, n: int) -> int:
        start, self.next_us = self.next_us, self.next_us + n * STEP_US
        return start


def lake() -> tuple[Any, Any, datetime]:
    """The transactions and labels the training pipeline ingested (same generator and parameters)."""
    from relearn.data.generator import GeneratorConfig, generate

    start = datetime(2026, 1, 1, tzinfo=UTC)  # pipelines.train's defaults with benchmarks.serving's args
    data = generate(GeneratorConfig(start=start, days=24, n_users=1000, n_merchants=200, seed=7))
    end = start + timedelta(days=24)
    return data.transactions, data.labels[data.labels["chargeback_timestamp"] < end], end


def load(
    name: str,
    port: int,
    groups: dict[str, list[Any]],
    template: Path,
    cursor: Cursor,
    concurrency: int,
    duration: float,
    work: Path,
) -> dict[str, Any]:
    """One cell: ``concurrency`` calls in flight for ``duration`` s; rps, latency and CPU µs/request."""
    processes = 1 if concurrency == 1 else 2
    count = MAX_RPS * int(duration) // processes + 200
    start_us = cursor.take(count * processes)
    procs, outs = [], []
    for p in range(processes):
        out = work / f"{name}-{concurrency}-{time.monotonic_ns()}-{p}.json"
        m = concurrency // processes + (1 if p < concurrency % processes else 0)
        cmd = [
            PLATFORM_PY, "-m", "benchmarks.features_loadgen", "--target", f"{HOST}:{port}", "--template",
            str(template), "--prefix", f"{out.stem}", "--start-us", str(start_us), "--step-us", str(STEP_US),
            "--stride", str(processes), "--offset", str(p), "--count", str(count), "--concurrency", str(m),
            "--duration", str(duration), "--out", str(out),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
        outs.append(out)
    for proc in procs:
        if (line := proc.stdout.readline().strip()) != "ready":
            raise RuntimeError(f"load generator did not start: {line!r}")
    pids = {g: [p for s in servers for p in s.pids()] for g, servers in groups.items()}
    start_at = time.time() + 0.05
    for proc in procs:
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = {g: cpu_seconds(p) for g, p in pids.items()}
    time.sleep(max(0.0, start_at + duration - time.time()))
    cpu1 = {g: cpu_seconds(p) for g, p in pids.items()}
    for proc in procs:
        proc.wait(timeout=duration + 60)
    results = [json.loads(out.read_text()) for out in outs]
    latencies = [x for r in results for x in r["latencies_us"]]
    requests = sum(r["requests"] for r in results)
    cell: dict[str, Any] = {"target": name, "concurrency": concurrency, "requests": requests}
    cell["errors"] = sum(r["errors"] for r in results)
    cell["note"] = next((r["first_error"] for r in results if r["first_error"]), "")
    cell["exhausted"] = any(r["exhausted"] for r in results)
    cell["rps"] = len(latencies) / duration
    p50, p99 = np.percentile(latencies, [50, 99]) / 1000 if latencies else (float("nan"),) * 2
    cell["p50_ms"], cell["p99_ms"] = float(p50), float(p99)
    for group in groups:
        cell[f"cpu_us_{group}"] = (cpu1[group] - cpu0[group]) * 1e6 / max(requests, 1)
    return cell


def worktree(commit: str, tmp: Path) -> Path:
    """A checkout of ``commit`` (git worktree; removed by :func:`drop_worktree`)."""
    path = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
                   check=True, capture_output=True)  # fmt: skip
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False,
                   capture_output=True)  # fmt: skip


def run(settings: FeatureBenchSettings) -> list[Row]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    rounds = 1 if settings.quick else settings.rounds
    duration = 2 if settings.quick else settings.duration
    samples = 300 if settings.quick else 2000
    with tempfile.TemporaryDirectory(prefix="relearn-bench-features-") as tmp_name:
        tmp = Path(tmp_name)
        home = prepare_home(settings, tmp)
        os.environ["RELEARN_HOME"] = str(home)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from relearn.serving.predictor_model import resolve_artifact

        model_dir, _ = resolve_artifact(f"models:/{MODEL}@champion", tmp / "model")
        transactions, labels, end = lake()
        rows = transactions.tail(2000)[list(_FIELDS)].astype({"event_timestamp": str}).to_dict("records")
        template = tmp / "template.json"
        template.write_text(json.dumps(rows))
        cursor = Cursor(int(end.timestamp()) * 1_000_000 + 3600 * 1_000_000)
        work = tmp / "work"
        work.mkdir()
        redis = RedisProcess(tmp / "redis")
        servers: list[Server] = []
        before_src = None
        out: list[Row] = []
        try:
            redis.start()
            print("state updates/s (OnlineState.add, batches of 2,000) ...", flush=True)
            rates = update_rate(transactions, labels, end, tmp / "rate.db", redis)  # leaves db 0 loaded
            env = {"RELEARN_HOME": str(home), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PYTHONUNBUFFERED": "1"}
            predictor = _server("predictor", "relearn.serving.predictor", env,
                                ["--model-uri", str(model_dir)])  # fmt: skip
            targets = {"sqlite": _transformer("transformer-sqlite", predictor, env)}
            targets["redis"] = _transformer(
                "transformer-redis", predictor,
                {**env, "RELEARN_STATE_BACKEND": "redis", "RELEARN_STATE_REDIS_URLS": redis.url(0)},
            )  # fmt: skip
            if not settings.skip_before:
                before_src = worktree(settings.before, tmp)
                before_home = tmp / "home-before"  # its Feast repo files are rewritten at start: a copy
                shutil.copytree(home, before_home)
                before_env = {"RELEARN_HOME": str(before_home), "PYTHONPATH": str(before_src / "src")}
                targets["before"] = _transformer("transformer-before", predictor, {**env, **before_env})
                targets["before"].cwd = before_src
            servers = [predictor, *targets.values()]
            for server in servers:
                server.start(tmp)
                print(f"  {server.name}: ready in {server.wait_ready():.1f} s", flush=True)
            cells = _measure(settings, predictor, targets, redis, template, cursor, rounds, duration, work)
            print("feature path latency and freshness ...", flush=True)
            latency = observe_latency(rows, cursor, home, redis, samples)
            fresh = freshness(rows, cursor, home, redis, targets, 100 if settings.quick else 300)
            out = _rows(cells, latency, fresh, rates, settings)
        finally:
            for server in reversed(servers):
                server.stop()
            redis.stop()
            if before_src is not None:
                drop_worktree(before_src)
    load_avg = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nrelearn online features: medians of {rounds} rounds x {duration} s per cell, v2 gRPC batch 1, "
          f"{os.cpu_count()} cores, load {load_avg} (1/5/15 min)\n")  # fmt: skip
    print(render(out))
    if settings.json:
        meta = {"rounds": rounds, "duration_s": duration, "cores": os.cpu_count(), "load": os.getloadavg()}
        write_json(out, settings.json, meta)
        print(f"\nJSON: {settings.json}")
    return out


_FIELDS = ("transaction_id", "event_timestamp", "user_id", "merchant_id", "amount", "currency")
_FIELDS += ("merchant_category", "channel", "country", "device_id")


def _server(name: str, module: str, env: dict[str, str], args: list[str]) -> Server:
    http, grpc = free_port(), free_port()
    cmd = [PLATFORM_PY, "-m", module, "--host", HOST, "--http-port", str(http), "--grpc-port", str(grpc),
           "--log-level", "WARNING", *args]  # fmt: skip
    return Server(name, cmd, http, grpc, env)


def _transformer(name: str, predictor: Server, env: dict[str, str]) -> Server:
    args = ["--predictor-host", f"{HOST}:{predictor.grpc_port}"]
    return _server(name, "relearn.serving.transformer", env, args)


def _measure(settings, predictor, targets, redis, template, cursor, rounds, duration, work) -> list[dict]:
    """Every cell once per round: predictor alone, each transformer at c = N and (current) at c = 1."""
    import pandas as pd

    from relearn.features.transforms import model_inputs

    inputs = model_inputs(pd.DataFrame(json.loads(template.read_text())[:1]))
    (work / "tensor-1.bin").write_bytes(tensor_request(inputs, 1)[1])
    alone = Target("predictor", [predictor], predictor.http_port, predictor.grpc_port)
    conc = settings.concurrency
    plan = [(name, c) for name in targets for c in (conc, 1) if c == conc or name != "before"]
    for name, server in targets.items():  # warm-up, not recorded
        load(name, server.grpc_port, {}, template, cursor, 4, 1, work)
    cells = []
    for rnd in range(1, rounds + 1):
        cell = measure_grpc(alone, 1, conc, duration, work, rnd)
        cells.append(
            {"target": "predictor", "concurrency": conc, "rps": cell.rps, "p50_ms": cell.p50_ms,
             "p99_ms": cell.p99_ms, "cpu_us_predictor": cell.cpu_us_per_req, "errors": cell.errors,
             "note": cell.note, "exhausted": False}
        )  # fmt: skip
        for name, c in plan:
            groups = {"transformer": [targets[name]], "predictor": [predictor]}
            if name == "redis":
                groups["redis"] = [redis]
            cells.append(load(name, targets[name].grpc_port, groups, template, cursor, c, duration, work))
        for cell in cells[-len(plan) - 1 :]:
            transformer = cell.get("cpu_us_transformer", float("nan"))
            print(
                f"  round {rnd} {cell['target']:<10} c{cell['concurrency']:<2} {cell['rps']:7.0f} req/s  "
                f"p99 {cell['p99_ms']:6.2f} ms  CPU us/req: transformer {transformer:6.0f}, predictor "
                f"{cell['cpu_us_predictor']:5.0f}, redis {cell.get('cpu_us_redis', float('nan')):4.0f}  "
                f"err {cell['errors']}{' EXHAUSTED' if cell['exhausted'] else ''} {cell['note'][:60]}",
                flush=True,
            )
    return cells


def _rows(cells, latency, fresh, rates, settings) -> list[Row]:
    def med(target: str, key: str, conc: int = settings.concurrency) -> float:
        chosen = [c for c in cells if c["target"] == target and c["concurrency"] == conc and not c["errors"]]
        return median([c.get(key, float("nan")) for c in chosen])

    size = f"c{settings.concurrency}"
    rps, cpu = med("predictor", "rps"), med("predictor", "cpu_us_predictor")
    out = [Row("predictor alone: requests/s, CPU/request", size, throughput=f"{rps:,.0f}/s",
               ratio=f"{cpu:,.0f} us", value=rps)]  # fmt: skip
    labels = {"sqlite": "current, SQLite", "redis": "current, Redis", "before": f"{settings.before}, Feast"}
    before_rps = med("before", "rps")
    for name, label in labels.items():
        rps, cpu, pred = med(name, "rps"), med(name, "cpu_us_transformer"), med(name, "cpu_us_predictor")
        if rps != rps:
            continue
        current = name != "before"
        extra = f" (+ redis {med(name, 'cpu_us_redis'):,.0f})" if name == "redis" else ""
        extra += f", {1e6 / cpu:,.0f}/s per CPU"
        out.append(
            Row(f"transformer CPU/request ({label}) / predictor's", size, throughput=f"{cpu:,.0f} us{extra}",
                ratio=f"{cpu / pred:.2f}x", aim="<= 2x" if current else "",
                ok=cpu <= 2 * pred if current else None, value=cpu)
        )  # fmt: skip
        gain = rps / before_rps
        known = current and gain == gain
        out.append(
            Row(f"transformer requests/s per replica ({label})", size, throughput=f"{rps:,.0f}/s",
                ratio=f"{gain:.1f}x before" if known else "", aim=">= 5x" if known else "",
                ok=gain >= 5 if known else None, value=rps)
        )  # fmt: skip
    for name in ("sqlite", "redis", "redis-always"):
        p50, p99 = latency[name]
        e2e = med(name.split("-")[0], "p99_ms", 1)
        labels = {"redis": "redis (fsync everysec, default)", "redis-always": "redis (fsync always)"}
        label = labels.get(name, name)
        out.append(
            Row(f"observe (read + update) p50 / p99, {label}", "batch 1",
                throughput=f"{p50:.2f} / {p99:.2f} ms", ratio=f"{p99 / e2e:.0%} of e2e p99 {e2e:.2f} ms (c1)",
                aim="p99 <= 2 ms", ok=p99 <= 2.0, value=p99)
        )  # fmt: skip
    p50, p99 = latency["redis-set"]
    times = latency["redis-always"][1] / p99
    out.append(
        Row("one SET on the same Redis, fsync always (the disk's floor) p50 / p99", "batch 1",
            throughput=f"{p50:.2f} / {p99:.2f} ms", ratio=f"observe p99 = {times:.1f}x this", value=p99)
    )  # fmt: skip
    for name, (first, total, lag50, lag99) in fresh.items():
        out.append(
            Row(f"freshness: read after the answer shows it, {name}", f"{total} requests",
                throughput=f"lag p50 {lag50:.2f} / p99 {lag99:.2f} ms", ratio=f"{first}/{total} on 1st read",
                aim="read-your-writes", ok=first == total, value=lag99)
        )  # fmt: skip
    for name, (n, seconds) in rates.items():
        rate = n / seconds
        out.append(
            Row(f"state updates/s per process ({name}, add)", f"{n:,} tx", seconds=seconds,
                throughput=f"{rate:,.0f} tx/s", aim=">= 20k/s", ok=rate >= 20_000, value=rate)
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.features``."""
    CliApp.run(FeatureBenchSettings, cli_args=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
