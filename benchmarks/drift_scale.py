"""``python -m benchmarks.drift_scale`` (drift environment): the detector's ingest, one process vs N replicas.

One run, side by side: the single detector (SQLite log, the embedded default) and N = 1, 2, ... ``--role
ingest`` replicas appending to a real PostgreSQL (Debian's, started here with fsync on, as in production),
the same batched events posted by the same clients spread over the replicas as a Service would. Then the
monitor relays the replicas' backlog into its log (its rate caps what N replicas can feed one monitor).

Each row also gives the CPU seconds per 1,000 events of the replicas and of PostgreSQL (from /proc), which is
what projects to a cluster, where each replica and the database get cores of their own; on this machine all
of them share 2 cores with the load generator, so N replicas cannot go N times as fast here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.drift_ingest import _batched, _client, _events, _wait_ready, ingest_row, socket_port
from benchmarks.table import Row, cpu_seconds, human, metric_sum, render

ROOT = Path(__file__).resolve().parents[1]


def _postgres():
    """A real PostgreSQL on loopback (the tests' helper), with fsync on: acknowledged means on disk."""
    sys.path.insert(0, str(ROOT / "tests"))  # tests/support holds the one PostgreSQL starter
    from support.serving_stack import PostgresServer

    class Durable(PostgresServer):
        def command(self) -> list[str]:
            return [a.replace("fsync=off", "fsync=on") for a in super().command()]

    return Durable()


def _postgres_pids(server) -> list[int]:
    """The postmaster and its backends (children)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def _start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket_port() as port:
        pass
    env = dict(os.environ, RELEARN_DRIFT_HOST="127.0.0.1", RELEARN_DRIFT_PORT=str(port), **env)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relearn.monitoring.server"], env=env, stdout=out, stderr=out
        )
    _wait_ready(port, proc)
    return proc, port


def replicas_row(n: int, url: str, postgres, events: list, batch: int, clients: int, work: Path) -> Row:
    """Events/s acknowledged by ``n`` ingest replicas; the shared table must hold exactly those."""
    import psycopg2

    posts = _batched(events, batch)
    started = [
        _start(
            {"RELEARN_DRIFT_ROLE": "ingest", "RELEARN_DRIFT_SHARED_LOG_URL": url},
            work / f"ingest-{n}-{i}.log",
        )
        for i in range(n)
    ]
    try:
        ports = [port for _, port in started]
        pids = [proc.pid for proc, _ in started]
        pg = _postgres_pids(postgres)
        cpu0, pg0 = cpu_seconds(pids), cpu_seconds(pg)
        shares = [(ports[i % n], posts[i::clients], 2) for i in range(clients)]  # a Service spreads them
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            done = pool.map(_client, shares)
        seconds = max(d[2] for d in done) - min(d[1] for d in done)
        cpu, pg_cpu = cpu_seconds(pids) - cpu0, cpu_seconds(_postgres_pids(postgres)) - pg0
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait(timeout=20)
    acked = min(sum(d[0] for d in done) * batch, len(events))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM relearn_inference_events")
        stored = int(cur.fetchone()[0])
    rate = acked / seconds
    per_k = 1000 / max(acked, 1)
    return Row(
        f"ingest replicas x{n} (PostgreSQL, batched {batch}/POST)",
        f"{human(len(events))} events",
        seconds,
        f"{human(rate)}/s",
        f"cpu/1k events: replicas {cpu * per_k:.3f} s, postgres {pg_cpu * per_k:.3f} s",
        "stored = acked",
        stored == acked == len(events),
        rate,
    )


def relay_row(url: str, backlog: int, work: Path) -> Row:
    """The monitor's relay of the replicas' backlog into its log: events/s (what one monitor takes)."""
    import pandas as pd

    from relearn.features.spec import MODEL_INPUTS

    reference = work / "reference.parquet"
    pd.DataFrame({f: [0.0] for f in MODEL_INPUTS if f != "hour_of_day"} | {"score": [0.1]}).to_parquet(
        reference
    )
    env = {
        "RELEARN_DRIFT_SHARED_LOG_URL": url,
        "RELEARN_DRIFT_DATA_DIR": str(work / "monitor"),
        "RELEARN_DRIFT_REFERENCE_PATH": str(reference),
        "RELEARN_DRIFT_REPORTS": "false",
        "RELEARN_DRIFT_WINDOW_SIZE": "100000",
        "RELEARN_DRIFT_POLL_S": "0.05",
    }
    proc, port = _start(env, work / "monitor.log")
    started = time.monotonic()
    relayed = 0.0
    try:
        while relayed < backlog and time.monotonic() - started < 600:
            relayed = metric_sum(f"http://127.0.0.1:{port}", "relearn_drift_relayed_events_total")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return Row(
        "monitor: relay + pairing of the replicas' backlog",
        f"{human(backlog)} events",
        seconds,
        f"{human(relayed / seconds)}/s",
        f"monitor read up to event {status['processed_seq']}",
        "every event once",
        relayed == backlog,
        relayed / seconds,
    )


class DriftScaleBenchmark(BaseSettings):
    """Drift-detector ingest: one process (SQLite) vs N ingest replicas (PostgreSQL), and the relay."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_DRIFT_SCALE_",
        cli_prog_name="python -m benchmarks.drift_scale",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    events: int = Field(120_000, ge=1000, description="Events posted per row (request + response).")
    max_replicas: int = Field(3, ge=1, le=8, description="The curve goes N = 1 .. this many replicas.")
    batch: int = Field(64, ge=2, description="Events per POST (the predictor's logger's batches).")
    clients: int = Field(4, ge=1, le=64, description="Client processes posting concurrently.")
    json_path: Path | None = Field(None, alias="json", description="Also write the rows as JSON here.")

    def cli_cmd(self) -> None:
        """Run and print the table."""
        rows = [ingest_row(self.events, self.clients, 2, batch=self.batch)]
        rows[0].what = "one detector, SQLite log (the default): " + rows[0].what
        events = _events(self.events)
        with tempfile.TemporaryDirectory() as tmp, _postgres() as postgres:
            work = Path(tmp)
            for n in range(1, self.max_replicas + 1):
                database = f"scale{n}"
                postgres.create_database(database)
                url = f"postgresql://{postgres.superuser}@127.0.0.1:{postgres.port}/{database}"
                rows.append(replicas_row(n, url, postgres, events, self.batch, self.clients, work))
            one = rows[1].value or 1.0
            for row in rows[2:]:
                row.aim = f"{row.aim}; {row.value / one:.2f}x one replica"
            rows.append(relay_row(url, self.events, work))
        print(render(rows))
        if self.json_path is not None:
            self.json_path.write_text(json.dumps([r.__dict__ for r in rows], indent=1))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.drift_scale``."""
    CliApp.run(DriftScaleBenchmark, cli_args=argv)


if __name__ == "__main__":
    main()
