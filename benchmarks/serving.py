"""``python -m benchmarks.serving``: relearn's servers side by side with KServe, MLServer and a bare floor.

One run starts every server on loopback, measures them back to back in interleaved rounds (every cell of
round 1, then of round 2, ...), stops them, and prints one table of medians over the rounds plus ratios:

* ``predictor``   relearn's predictor alone (``python -m relearn.serving.predictor``);
* ``transformer`` the full path: relearn's transformer (Feast online features) → predictor over gRPC;
* ``kserve``      a default KServe ``ModelServer`` with a plain custom ``kserve.Model``
  (benchmarks.serving_kserve);
* ``mlserver``    Seldon MLServer with a custom runtime (benchmarks.serving_mlserver, .venv/mlserver);
* ``floor``       a raw ASGI app under uvicorn and a bare ``grpc.aio`` servicer that answer without a model
  (benchmarks.serving_floor);
* ``logging``     the predictor with payload logging to a fast local sink, vs ``predictor`` (logging off);
  a run where it dropped events says so (a logger that drops does less work, so its ratio would flatter it);
* ``feast``       one-entity online feature fetch: relearn's fetch path vs plain ``get_online_features``.

Load: wrk (Debian package) with a Lua POST script for v2 REST; for v2 gRPC, N processes of
``benchmarks.serving_loadgen`` (grpc.aio, M concurrent calls each, pre-serialized requests). Server CPU per
request comes from the server processes' (and their children's) CPU time before/after each cell.
Goals are the issue's; a miss is reported, never an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.serving_measure import (
    Cell,
    Target,
    measure_grpc,
    measure_rest,
    tensor_request,
    transaction_request,
)
from benchmarks.serving_proc import HOST, MODEL, PLATFORM_PY, ROOT, Server, free_port
from benchmarks.serving_report import (
    GOAL_BATCH,
    GOAL_CONCURRENCY,
    PROTOCOLS,
    TARGETS,
    cells_table,
    ratio_rows,
    summarize,
)
from benchmarks.table import Row, metric_sum, render

MLSERVER_BIN = ROOT / ".venv" / "mlserver" / "bin" / "mlserver"
TRAIN_ARGS = ["--days", "24", "--users", "1000", "--merchants", "200", "--epochs", "3"]

warnings.filterwarnings("ignore", message='Field name "json" in "ServingBenchSettings" shadows')


class ServingBenchSettings(BaseSettings):
    """Benchmark relearn's predictor and transformer against default KServe, MLServer and a bare floor.

    Every server runs on 127.0.0.1 and is stopped at the end. Cells are (target, protocol, batch,
    concurrency); each is measured once per round, rounds back to back; the table shows medians and ratios.
    Every option can also be set as RELEARN_BENCH_SERVING_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_SERVING_",
        cli_prog_name="python -m benchmarks.serving",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    rounds: int = Field(3, ge=1, description="Rounds (every cell once per round); the table shows medians.")
    duration: int = Field(
        3, ge=1, le=60, description="Seconds of load per cell and round (whole seconds: wrk)."
    )
    concurrency: list[int] = Field([1, 8, 32], description="Concurrent requests in flight.")
    batch: list[int] = Field([1, 64], description="Rows (transactions) per request.")
    quick: bool = Field(
        False, description="Fast check: batch 1, concurrency 8 (the goals' cell), 2 s per cell."
    )
    only: list[str] | None = Field(None, description=f"Targets to run (default all): {', '.join(TARGETS)}.")
    home: Path | None = Field(
        None,
        description="RELEARN_HOME with a registered champion and a materialized Feast store "
        "(default: train one into a temporary directory, ~1-2 min).",
    )
    pin: bool = Field(
        True,
        description="Measure each target's server on CPU 0 alone, with the load generators and helpers on "
        "the other CPUs (a pod with one CPU; without it a 2-core machine measures contention). Rounds "
        "alternate the cell order (ABBA), so a drift of the machine does not favour the first target.",
    )
    # Named "json" for the --json flag and RELEARN_BENCH_SERVING_JSON.
    json: Path | None = Field(None, description="Also write cells, medians and goals as JSON to this file.")

    def cli_cmd(self) -> None:
        """Runs the serving benchmark and prints the table."""
        run(self)


# --------------------------------------------------------------------------------------------- setup


def prepare_home(settings: ServingBenchSettings, tmp: Path) -> Path:
    """A RELEARN_HOME with a registered champion: the given one, or one trained now."""
    if settings.home is not None:
        return settings.home.resolve()
    home = tmp / "home"
    print(
        f"training and registering a model into {home} (pipelines.run {' '.join(TRAIN_ARGS)}) ...", flush=True
    )
    env = {**os.environ, "RELEARN_HOME": str(home)}
    cmd = [PLATFORM_PY, "-m", "pipelines.run", *TRAIN_ARGS, "--pipeline-root", str(tmp / "pipeline_runs")]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return home


def sample_data(home: Path, rows: int = 256) -> tuple[Any, Any, Any]:
    """(raw transactions, their MODEL_INPUTS from the online store, the store) for the payloads."""
    from relearn.data.generator import GeneratorConfig, generate
    from relearn.features.store import get_store, online_model_inputs
    from relearn.settings import RelearnSettings

    data = generate(GeneratorConfig(days=24, n_users=1000, n_merchants=200))
    raw = data.transactions.tail(rows).reset_index(drop=True)
    store = get_store(RelearnSettings(home=home))
    inputs = online_model_inputs(store, raw)
    return raw, inputs, store


def _log_counts(server: Server) -> tuple[float, float]:
    """(sent, dropped) payload-log events of a predictor, from its /metrics."""
    url = f"http://{HOST}:{server.http_port}"
    return metric_sum(url, "relearn_payload_log_sent_total"), metric_sum(
        url, "relearn_payload_log_dropped_total"
    )


def build_targets(settings: ServingBenchSettings, home: Path, model_dir: Path, work: Path) -> list[Target]:
    wanted = set(settings.only or TARGETS)
    env = {"RELEARN_HOME": str(home), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PYTHONUNBUFFERED": "1"}
    targets: list[Target] = []

    def predictor(name: str, extra: list[str]) -> Server:
        http, grpc = free_port(), free_port()
        cmd = [
            PLATFORM_PY, "-m", "relearn.serving.predictor", "--host", HOST, "--http-port", str(http),
            "--grpc-port", str(grpc), "--model-uri", str(model_dir), "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        return Server(name, cmd, http, grpc, env)

    if wanted & {"predictor", "transformer", "logging"}:
        ours = predictor("predictor", [])
        targets.append(Target("predictor", [ours], ours.http_port, ours.grpc_port))
        if "transformer" in wanted:
            http, grpc = free_port(), free_port()
            cmd = [
                PLATFORM_PY, "-m", "relearn.serving.transformer", "--host", HOST, "--http-port", str(http),
                "--grpc-port", str(grpc), "--predictor-host", f"{HOST}:{ours.grpc_port}",
                "--log-level", "WARNING",
            ]  # fmt: skip
            server = Server("transformer", cmd, http, grpc, env)
            targets.append(Target("transformer", [server, ours], http, grpc, payload="transactions"))
    if "logging" in wanted:
        sink_port = free_port()
        sink = Server(
            "sink", [PLATFORM_PY, "-m", "benchmarks.serving_floor", "sink", "--port", str(sink_port)]
        )
        sink.http_port = sink_port
        logged = predictor("predictor+logging", ["--log-sink-url", f"http://{HOST}:{sink_port}/"])
        targets.append(
            Target("logging", [logged], logged.http_port, logged.grpc_port, cells="batches", helpers=[sink])
        )
    if "kserve" in wanted:
        http, grpc = free_port(), free_port()
        cmd = [
            PLATFORM_PY, "-m", "benchmarks.serving_kserve", "--model-dir", str(model_dir),
            "--http_port", str(http), "--grpc_port", str(grpc),
        ]  # fmt: skip
        targets.append(Target("kserve", [Server("kserve", cmd, http, grpc, env)], http, grpc))
    if "mlserver" in wanted:
        if not MLSERVER_BIN.exists():
            print(f"mlserver: skipped ({MLSERVER_BIN} missing; see requirements/mlserver.txt)")
        else:
            from benchmarks.serving_mlserver import write_model_repository

            http, grpc = free_port(), free_port()
            repo = write_model_repository(work / "mlserver", model_dir, http, grpc, free_port())
            server = Server("mlserver", [str(MLSERVER_BIN), "start", str(repo)], http, grpc, env)
            targets.append(Target("mlserver", [server], http, grpc))
    if "floor" in wanted:
        http, grpc = free_port(), free_port()
        rest = Server(
            "floor-rest", [PLATFORM_PY, "-m", "benchmarks.serving_floor", "rest", "--port", str(http)]
        )
        rest.http_port = http
        bare = Server(
            "floor-grpc", [PLATFORM_PY, "-m", "benchmarks.serving_floor", "grpc", "--port", str(grpc)]
        )
        bare.grpc_port = grpc
        targets.append(Target("floor", [rest, bare], http, grpc, model="floor"))
    order = ("predictor", "logging", "transformer", "kserve", "mlserver", "floor")
    return sorted(targets, key=lambda t: order.index(t.name))


# --------------------------------------------------------------------------------------------- feast


def feast_fetch(store: Any, raw: Any, rounds: int, calls: int = 300) -> dict[str, list[float]]:
    """p99 (ms) of a one-entity online fetch per round: relearn's fetch path vs plain Feast per request."""
    from feast import FeatureStore

    from relearn.features.spec import MERCHANT_FEATURES, MERCHANT_VIEW, USER_FEATURES, USER_VIEW
    from relearn.features.store import online_features

    refs = [f"{USER_VIEW}:{f}" for f in USER_FEATURES] + [f"{MERCHANT_VIEW}:{f}" for f in MERCHANT_FEATURES]
    repo = store.repo_path

    def relearn_path(i: int) -> None:
        online_features(store, raw.iloc[i % len(raw) : i % len(raw) + 1])

    def plain(i: int) -> None:
        row = raw.iloc[i % len(raw)]
        store.get_online_features(
            features=refs, entity_rows=[{"user_id": row["user_id"], "merchant_id": row["merchant_id"]}]
        ).to_dict()

    def fresh_store(i: int) -> None:
        row = raw.iloc[i % len(raw)]
        FeatureStore(repo_path=str(repo)).get_online_features(
            features=refs, entity_rows=[{"user_id": row["user_id"], "merchant_id": row["merchant_id"]}]
        ).to_dict()

    results: dict[str, list[float]] = {"relearn": [], "plain": [], "fresh_store": []}
    for _ in range(rounds):
        for name, fn in (("relearn", relearn_path), ("plain", plain), ("fresh_store", fresh_store)):
            n = calls if name != "fresh_store" else max(20, calls // 10)
            fn(0)
            times = []
            deadline = time.perf_counter() + 20
            for i in range(n):
                begin = time.perf_counter()
                fn(i)
                times.append(time.perf_counter() - begin)
                if time.perf_counter() > deadline:
                    break
            results[name].append(float(np.percentile(times, 99)) * 1000)
    return results


# --------------------------------------------------------------------------------------------- run


def run(settings: ServingBenchSettings) -> dict[str, Any]:
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y {tool}")
    unknown = set(settings.only or ()) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    batches = [1] if settings.quick else settings.batch
    concurrencies = [GOAL_CONCURRENCY] if settings.quick else settings.concurrency
    duration = 2 if settings.quick else settings.duration
    with tempfile.TemporaryDirectory(prefix="relearn-bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        home = prepare_home(settings, tmp)
        os.environ["RELEARN_HOME"] = str(home)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from relearn.serving.predictor_model import resolve_artifact

        model_dir, version = resolve_artifact(f"models:/{MODEL}@champion", tmp / "model")
        raw, inputs, store = sample_data(home)
        work = tmp / "work"
        work.mkdir()
        for batch in sorted({*batches, GOAL_BATCH}):
            for kind, make, source in (
                ("tensor", tensor_request, inputs),
                ("transactions", transaction_request, raw),
            ):
                body, grpc_bytes = make(source, batch)
                (work / f"{kind}-{batch}.json").write_bytes(body)
                (work / f"{kind}-{batch}.bin").write_bytes(grpc_bytes)
        targets = [t for t in build_targets(settings, home, model_dir, work) if t.name != "feast"]
        servers = list(dict.fromkeys(s for t in targets for s in (*t.helpers, *t.servers)))
        startup: dict[str, float] = {}
        cells: list[Cell] = []
        logged: dict[str, tuple[float, float]] = {}
        feast = None
        try:
            for server in servers:  # one at a time: start -> ready is not disturbed by the others starting
                server.start(tmp)
                startup[server.name] = server.wait_ready()
                print(f"  {server.name}: ready in {startup[server.name]:.2f} s", flush=True)
            plan = [
                (t, p, b, c)
                for b in batches
                for c in concurrencies
                for p in PROTOCOLS
                for t in targets
                if t.cells == "all" or (c == GOAL_CONCURRENCY and (t.cells == "batches" or b == GOAL_BATCH))
            ]
            if not plan and any(t.cells == "goal" for t in targets):
                plan = [(t, p, GOAL_BATCH, GOAL_CONCURRENCY) for p in PROTOCOLS for t in targets]
            for t, p, b, _ in {(t, p, b, 0): None for t, p, b, _ in plan}:  # warm-up, not recorded
                (measure_rest if p == "rest" else measure_grpc)(t, b, 4, 1, work, 0)
            estimate = len(plan) * settings.rounds * (duration + 1.0)
            print(
                f"measuring {len(plan)} cells x {settings.rounds} rounds x {duration} s "
                f"(~{estimate / 60:.1f} min)",
                flush=True,
            )
            for t in targets:
                t.pinned = settings.pin
            for rnd in range(1, settings.rounds + 1):
                for t, p, b, c in plan if rnd % 2 else plan[::-1]:
                    cell = (measure_rest if p == "rest" else measure_grpc)(t, b, c, duration, work, rnd)
                    cells.append(cell)
                    print(
                        f"  round {rnd} {t.name:<12} {p:<4} b{b:<3} c{c:<3} {cell.rps:9.0f} req/s  "
                        f"p99 {cell.p99_ms:7.2f} ms  cpu {cell.cpu_us_per_req:7.0f} us/req  err {cell.errors}"
                        + (f"  {cell.note[:80]}" if cell.note else ""),
                        flush=True,
                    )
            sink = next((s for s in servers if s.name == "sink"), None)
            if sink is not None:
                with urllib.request.urlopen(f"http://{HOST}:{sink.http_port}/sink/count", timeout=2) as r:
                    print(f"  payload-log sink received {json.loads(r.read())['events']} POSTs", flush=True)
            # A logger that dropped events did less work: its ratio would flatter it (the rows say so).
            logged = {s.name: _log_counts(s) for s in servers if s.name.startswith("predictor+logging")}
            for name, (sent, dropped) in logged.items():
                print(f"  {name}: {sent:.0f} events sent, {dropped:.0f} dropped", flush=True)
        finally:
            for server in reversed(servers):
                server.stop()
        if "feast" in set(settings.only or TARGETS):
            print("timing the Feast online fetch (one entity) ...", flush=True)
            feast = feast_fetch(store, raw, settings.rounds, 100 if settings.quick else 300)
    medians = summarize(cells)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nrelearn serving benchmark: medians of {settings.rounds} rounds x {duration} s per cell, "
        f"{os.cpu_count()} cores, load {load} (1/5/15 min), model version {version}\n"
        + ("measured server on CPU 0 alone; load generators and helpers on the others\n" * settings.pin)
    )
    print(cells_table(medians))
    print()
    rows = ratio_rows(medians, startup, feast)
    for name, (sent, dropped) in logged.items():
        what = f"payload logging: events dropped ({name})"
        rows.append(Row(what, f"{sent:.0f} sent", None, "", f"{dropped:.0f}", "0", dropped == 0))
    print(render(rows))
    result = {
        "meta": {
            "rounds": settings.rounds,
            "duration_s": duration,
            "cores": os.cpu_count(),
            "load": os.getloadavg(),
            "pinned": settings.pin,
        },
        "cells": [asdict(c) for c in cells],
        "medians": [
            {"target": k[0], "protocol": k[1], "batch": k[2], "concurrency": k[3], **v}
            for k, v in medians.items()
        ],
        "rows": [asdict(r) for r in rows],
        "feast_p99_ms": feast,
        "startup_s": startup,
    }
    if settings.json:
        settings.json.parent.mkdir(parents=True, exist_ok=True)
        settings.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nJSON: {settings.json}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.serving``."""
    CliApp.run(ServingBenchSettings, cli_args=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
