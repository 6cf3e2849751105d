"""``python -m benchmarks.data_engines`` (``make bench-data``): the features step's data work on two engines.

For each size (default 1 M and 10 M transactions, the generator's world, 28 days) the same day-partitioned
lake is turned into the entity feature tables and the point-in-time training set by each engine, side by
side in one run: pandas (``entity_feature_tables`` + ``training_set``, one process) and Spark local
(``relearn.features.spark_engine``, ``local[N]`` with a ``--driver-memory`` heap). Each engine runs in a
process of its own; this process samples the resident memory of that process and all its children (the
JVM, Python workers) every 0.1 s: "peak" is the largest sum. A run above ``--kill-above`` bytes is stopped
(the row says so) instead of taking the machine down. Feast's materialize and the streaming state's
bootstrap, the same for both engines, are not part of it. Every option is also a
``RELEARN_BENCH_DATA_<OPTION>`` variable.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import psutil
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.cases import GB, START, say, world
from benchmarks.table import Row, human, render, write_json

warnings.filterwarnings("ignore", message='Field name "json" in "DataEnginesBench" shadows')
DAYS = 28


class DataEnginesBench(BaseSettings):
    """Wall time and peak memory of the features step's data work, pandas vs Spark local, per size."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_DATA_",
        cli_prog_name="python -m benchmarks.data_engines",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    sizes: list[int] = Field([1_000_000, 10_000_000], description="Transactions per run.")
    engines: list[str] = Field(["pandas", "spark"], description="Engines to compare.")
    master: str = Field("local[2]", description="Spark master (local mode: this machine's cores).")
    driver_memory: str = Field("4g", description="Spark driver heap (local mode: the engine's heap).")
    kill_above: float = Field(12 * GB, description="Stop a run whose processes hold more bytes than this.")
    cache: Path = Field(Path(".relearn/bench-data"), description="Where the generated lakes are kept.")
    json: Path | None = Field(None, description="Also write the rows to this JSON file.")

    def cli_cmd(self) -> None:
        rows = []
        for size in self.sizes:
            lake = generated_lake(size, self.cache, self.kill_above)
            runs = {engine: self.measure(engine, lake, size) for engine in self.engines}
            base = runs.get("pandas")
            for engine, (seconds, peak, status) in runs.items():
                ratio = ""
                if base and engine != "pandas" and status == "ok" and base[2] == "ok":
                    ratio = f"{seconds / base[0]:.2f} x pandas time, {peak / base[1]:.2f} x its peak"
                # The aim: pandas within 4 GB of memory, Spark within a 4 GB driver heap.
                spark = engine == "spark"
                rows.append(
                    Row(
                        f"{engine} tables + training set" + ("" if status == "ok" else f" ({status})"),
                        f"{human(size)} tx",
                        seconds,
                        f"peak {peak / GB:.2f} GB",
                        ratio,
                        aim=f"finishes, heap {self.driver_memory}" if spark else "peak <= 4 GB",
                        ok=status == "ok" and (spark or peak <= 4 * GB),
                        value=peak,
                    )
                )
        print(render(rows))
        if self.json:
            meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "master": self.master}
            write_json(rows, self.json, meta | {"driver_memory": self.driver_memory})

    def measure(self, engine: str, lake: Path, size: int) -> tuple[float, float, str]:
        """Run one engine on one lake in a child process: (seconds, peak bytes, "ok" or what stopped it)."""
        out = lake.parent / f"out-{engine}-{size}"
        say(f"{engine}: {human(size)} transactions")
        cmd = [sys.executable, "-m", "benchmarks.data_engines", engine, str(lake), str(out)]
        env = os.environ | {
            "RELEARN_SPARK_MASTER": self.master,
            "RELEARN_SPARK_DRIVER_MEMORY": self.driver_memory,
        }
        started = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        peak, status = 0.0, "ok"
        while child.poll() is None:
            peak = max(peak, tree_rss(child.pid))
            if peak > self.kill_above:
                child.kill()
                status = f"stopped above {self.kill_above / GB:.0f} GB"
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        if status == "ok" and child.returncode != 0:
            status = f"failed: exit {child.returncode}"
        elif status == "ok":
            report = json.loads(child.stdout.read().strip().splitlines()[-1])
            seconds = report["seconds"]  # the work itself, without the interpreter's start
        return seconds, peak, status


def tree_rss(pid: int) -> float:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def _cap_memory(limit: float) -> None:
    """In the generator's child: a MemoryError above ``limit`` bytes of address space, not a swapless OOM."""
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))


def generated_lake(size: int, cache: Path, kill_above: float) -> Path:
    """The generator's world of ``size`` transactions as a lake under ``cache`` (made once, in a child)."""
    lake = cache.resolve() / f"lake-{size}"
    if not (lake / ".complete").exists():
        say(f"generator: {human(size)} transactions into {lake}")
        command = [sys.executable, "-m", "benchmarks.data_engines", "generate", str(lake), str(size)]
        subprocess.run(command, check=True, preexec_fn=lambda: _cap_memory(kill_above))
    return lake


# ------------------------------------------------------------------------------ child processes (workers)
def generate_lake(lake: Path, size: int) -> None:
    from relearn.data import generator, io

    shape = world(size, DAYS)
    config = generator.GeneratorConfig(
        start=START, days=DAYS, n_users=shape["users"], n_merchants=shape["merchants"], seed=0
    )
    data = generator.generate(config)
    labels = data.labels[data.labels["chargeback_timestamp"] < config.end]
    io.write_partitioned(data.transactions, lake, "transactions")
    io.write_partitioned(labels, lake, "labels")
    (lake / ".complete").touch()


def run_pandas(lake: Path, out: Path) -> None:
    from relearn.data import io
    from relearn.features import store as feast_store
    from relearn.settings import RelearnSettings

    settings = RelearnSettings(home=out)
    tx, labels = io.read_transactions(lake), io.read_labels(lake)
    feast_store.write_feature_tables(tx, labels, settings)
    store = feast_store.get_store(settings)
    feast_store.apply(store, settings)
    frame = feast_store.training_set(store, tx, labels, label_cutoff=START + timedelta(days=DAYS))
    frame.to_parquet(out / "training.parquet", index=False)


def run_spark(lake: Path, out: Path) -> None:
    from relearn.data import spark_lake
    from relearn.data.spark_session import spark_session
    from relearn.features import spark_engine
    from relearn.features import store as feast_store
    from relearn.settings import RelearnSettings

    spark = spark_session()
    settings = RelearnSettings(home=out)
    tx = spark_lake.read_lake(spark, lake, "transactions")
    labels = spark_lake.read_lake(spark, lake, "labels")
    users, merchants = spark_engine.entity_feature_tables(tx, labels)
    offline = settings.offline_dir()
    offline.mkdir(parents=True, exist_ok=True)
    spark_lake.write_parquet_file(users, offline / feast_store.USER_TABLE)
    spark_lake.write_parquet_file(merchants, offline / feast_store.MERCHANT_TABLE)
    store = feast_store.get_store(settings)
    feast_store.apply(store, settings)
    frame = spark_engine.training_set(store, tx, labels, START + timedelta(days=DAYS))
    spark_lake.write_parquet_file(frame, out / "training.parquet")


def worker(argv: list[str]) -> None:
    """``generate <lake> <size>`` or ``pandas|spark <lake> <out>``; the last line printed: the seconds."""
    what, lake = argv[0], Path(argv[1])
    if what == "generate":
        generate_lake(lake, int(argv[2]))
        return
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    {"pandas": run_pandas, "spark": run_spark}[what](lake, out)
    print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("generate", "pandas", "spark"):
        worker(sys.argv[1:])
    else:
        CliApp.run(DataEnginesBench)
