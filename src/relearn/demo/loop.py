"""The whole loop on one machine: ``run(DemoSettings())`` (``make demo``, ``relearn-demo``).

1. The world (history + live stream, cached) and the first champion: the training pipeline under kfp.local
   on the history (cached too, so a second run starts from the same champion).
2. The local stack on loopback: drift detector (its own environment), predictor, router, transformer,
   Prometheus scraping them, and the rollout controller.
3. The replay sends the live stream through the transformer's gRPC endpoint; the scenario starts part-way.
4. An alert of the drift detector (input drift or a quality drop found through the chargebacks) reaches the
   demo's webhook, which runs the training pipeline on the recent data. A challenger that passes the gate is
   served by a new predictor and deployed as a shadow (the pipeline's deploy logic); from there the
   controller alone moves it to canary, steps it and promotes it, or rolls it back.
5. Everything is stopped (no process left, ports freed) and the report is written.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from relearn.demo.controller import controller_command, inference_log
from relearn.demo.replay import Replay, failed
from relearn.demo.respond import AlertWebhook, recalibrate_argv
from relearn.demo.settings import DemoSettings
from relearn.demo.stack import (
    Child,
    Processes,
    StackError,
    free_port,
    left_running,
    prometheus_config,
    start_state_redis,
    write_targets,
)
from relearn.demo.world import START, World, build, cache_key
from relearn.logs import progress_bar

log = logging.getLogger(__name__)
MODEL = "relearn-fraud"
SHADOW_SERVICE = f"{MODEL}-shadow"


@dataclass
class Timeline:
    """What happened when: wall clock, the stream's clock, what, details."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, sim: pd.Timestamp | None = None, **detail: Any) -> None:
        """Record an event now."""
        entry = {"wall": time.time(), "sim": None if sim is None else sim.isoformat(), "kind": kind, **detail}
        self.events.append(entry)
        log.info(kind, extra=detail)

    def first(self, kind: str) -> dict[str, Any] | None:
        """The first event of a kind."""
        return next((e for e in self.events if e["kind"] == kind), None)


# ------------------------------------------------------------------------------------------ pipeline
def _options(**options: Any) -> list[str]:
    """``--kebab-name value`` pairs."""
    return [x for name, value in options.items() for x in (f"--{name.replace('_', '-')}", str(value))]


def pipeline_argv(
    settings: DemoSettings, source: Path, start: pd.Timestamp, days: int, home: Path
) -> list[str]:
    """``python -m pipelines.run`` on the data lake window ``[start, start + days)``; summary to JSON."""
    options = _options(
        source=source,
        start=start.isoformat(),
        days=days,
        seed=settings.seed,
        label_maturity_days=round(settings.label_maturity_days),
        alert_budget=settings.alert_budget,
        max_slice_regression=settings.max_slice_regression,
        # A short recent window: keep 75 % of it (the oldest part, by time) for training, so the rows of
        # a new pattern reach the training split and not only validation and test.
        val_fraction=0.1,
        test_fraction=0.15,
        pipeline_root=home / "pipeline_runs",
        summary_json=home / "pipeline_runs" / f"summary-{start:%Y%m%dT%H%M}.json",
        log_level="WARNING",
    )
    return [sys.executable, "-m", "pipelines.run", *options]


def pipeline_summary(argv: list[str], returncode: int, log_path: Path) -> dict[str, Any]:
    """The run's summary, or an ``error`` naming the log."""
    summary = Path(argv[argv.index("--summary-json") + 1])
    if returncode != 0 or not summary.exists():
        return {"error": f"training pipeline failed (exit {returncode}); see {log_path}"}
    return json.loads(summary.read_text())


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "RELEARN_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def redis_state(settings: DemoSettings, procs: Processes, home: Path, lake: Path) -> None:
    """The streaming state on a real Redis: started, then bootstrapped from the lake up to the live start.

    The first champion's run (or its cached copy) filled the embedded state; Redis starts empty, so the
    backfill command adds the history's events (idempotent by transaction id), as an operator would.
    """
    start_state_redis(procs, home, settings.redis_server, settings.state_appendfsync)
    until = START + timedelta(days=settings.history_days)
    argv = [sys.executable, "-m", "relearn.features.backfill", "--transactions", str(lake)]
    argv += ["--labels", str(lake), "--until", until.isoformat()]
    with (home / "logs" / "state-bootstrap.log").open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=out, env=procs.env, check=False)
    if done.returncode != 0:
        raise StackError(f"state bootstrap failed (exit {done.returncode}); see {out.name}")


def first_champion(settings: DemoSettings, world: World, home: Path, show: bool) -> dict[str, Any]:
    """Train the first champion on the history, or restore it (MLflow, Feast repo) from the cache."""
    argv = pipeline_argv(settings, world.source, pd.Timestamp(START), settings.history_days, home)
    package = Path(__file__).resolve().parents[1]
    code = [*package.glob("model/*.py"), *package.glob("features/*.py"), package / "steps.py"]
    cache = settings.home.resolve() / "champions" / cache_key({"world": world.key, "argv": argv}, *code)
    if home.exists():
        shutil.rmtree(home)
    if (cache / "summary.json").exists():
        shutil.copytree(cache, home)  # same absolute paths as when it was trained: URIs stay valid
        return json.loads((cache / "summary.json").read_text())
    (home / "logs").mkdir(parents=True)
    log_path = home / "logs" / "train-champion.log"
    with log_path.open("w") as out:  # in the foreground: its progress bar shows, Ctrl-C reaches it
        done = subprocess.run(argv, stdout=out, stderr=None if show else out, env=_env(home), check=False)
    summary = pipeline_summary(argv, done.returncode, log_path)
    if "error" in summary:
        raise StackError(summary["error"])
    (home / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(home, cache)
    return summary


# ---------------------------------------------------------------------------------------------- stack
@dataclass
class Stack:
    """Ports and processes of the local stack."""

    procs: Processes
    home: Path
    ports: dict[str, int]
    targets: dict[str, int] = field(default_factory=dict)

    def url(self, name: str) -> str:
        """``http://127.0.0.1:<port>`` of a named port."""
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def state(self) -> Path:
        """The local router's state file (the rollout backend)."""
        return self.home / "rollout" / "state.json"

    def scrape(self, name: str, port: int) -> None:
        """Add a Prometheus scrape target."""
        self.targets[name] = port
        write_targets(self.home / "prometheus" / "targets.json", self.targets)


def start_predictor(stack: Stack, version: str, wait: bool = True) -> tuple[Child, str, str]:
    """A predictor of ``models:/relearn-fraud/<version>`` logging to the detector: ``(child, rest, grpc)``."""
    http, grpc_port = free_port(), free_port()
    child = stack.procs.start(
        f"predictor-v{version}",
        [sys.executable, "-m", "relearn.serving.predictor"],
        ports=(http, grpc_port),
        RELEARN_PREDICTOR_HOST="127.0.0.1",
        RELEARN_PREDICTOR_HTTP_PORT=str(http),
        RELEARN_PREDICTOR_GRPC_PORT=str(grpc_port),
        RELEARN_PREDICTOR_MODEL_URI=f"models:/{MODEL}/{version}",
        RELEARN_PREDICTOR_LOG_SINK_URL=stack.url("detector") + "/",
        RELEARN_PREDICTOR_LOG_QUEUE_SIZE="2000",
        RELEARN_PREDICTOR_LOG_LEVEL="WARNING",
    )
    rest = f"http://127.0.0.1:{http}"
    if wait:
        stack.procs.wait_http(child, f"{rest}/v2/health/ready")
    stack.scrape(f"predictor-v{version}", http)
    return child, rest, f"127.0.0.1:{grpc_port}"


def start_stack(
    settings: DemoSettings, home: Path, wall_per_day: float, procs: Processes, lake: Path | None = None
) -> Stack:
    """MLflow server, drift detector, predictor (champion), router, transformer, Prometheus, controller.

    All start at once (each finds the others by port) and the function returns when all are ready.
    """
    from relearn.rollout.router import LocalBackend

    names = ("mlflow", "detector", "router_rest", "router_grpc", "transformer_http", "transformer_grpc")
    names += ("feed",)
    stack = Stack(procs, home, {name: free_port() for name in (*names, "prometheus", "webhook")})
    port = stack.ports
    (home / "prometheus").mkdir(parents=True, exist_ok=True)
    stack.state.parent.mkdir(parents=True, exist_ok=True)
    # The detector's environment has mlflow-skinny (no SQL store): it reads the registry over HTTP, as in a
    # cluster, from an MLflow server on the demo's SQLite database.
    store = f"sqlite:///{home / 'mlflow.db'}"
    mlflow = procs.start(
        "mlflow",
        [str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1",
         *_options(host="127.0.0.1", port=port["mlflow"], backend_store_uri=store)],
        ports=(port["mlflow"],),
    )  # fmt: skip
    detector = procs.start(
        "drift-detector",
        [str(settings.drift_python.absolute()), "-m", "relearn.monitoring.server"],
        ports=(port["detector"],),
        RELEARN_DRIFT_PORT=str(port["detector"]),
        RELEARN_DRIFT_DATA_DIR=str(home / "drift"),
        RELEARN_DRIFT_MLFLOW_TRACKING_URI=stack.url("mlflow"),
        RELEARN_DRIFT_MODEL_NAME=MODEL,
        RELEARN_DRIFT_REFERENCE_POLL_S="3",
        RELEARN_DRIFT_WINDOW_SIZE=str(settings.window_size),
        RELEARN_DRIFT_QUALITY_WINDOW=str(settings.quality_window),
        RELEARN_DRIFT_ALERT_BUDGET=str(settings.alert_budget),
        RELEARN_DRIFT_LABEL_MATURITY_S=str(settings.label_maturity_days * wall_per_day),
        RELEARN_DRIFT_WEBHOOK_URL=f"http://127.0.0.1:{port['webhook']}/",
        RELEARN_DRIFT_COOLDOWN_S=str(2 * wall_per_day),
        RELEARN_DRIFT_SHADOW_SERVICE=SHADOW_SERVICE,
        RELEARN_DRIFT_SQLITE_SYNCHRONOUS="NORMAL",
        RELEARN_DRIFT_REPORTS="false",
        RELEARN_DRIFT_LOG_LEVEL="WARNING",
        # Training/serving skew: served vectors against the world's lake, every 20 s.
        **(
            {"RELEARN_DRIFT_SKEW_LAKE_DIR": str(lake), "RELEARN_DRIFT_SKEW_INTERVAL_SECONDS": "20"}
            if lake
            else {}
        ),
    )
    champion = _alias_version("champion", home)
    predictor, rest, grpc_target = start_predictor(stack, champion, wait=False)
    LocalBackend(stack.state).register(champion, rest=rest, grpc=grpc_target)  # the first one is stable
    router = procs.start(
        "router",
        [sys.executable, "-m", "relearn.rollout.router", *_options(
            state=stack.state, seed=settings.seed, rest_port=port["router_rest"],
            grpc_port=port["router_grpc"])],
        ports=(port["router_rest"], port["router_grpc"]),
    )  # fmt: skip
    feed = procs.start(
        "feature-feed",
        [sys.executable, "-m", "relearn.features.feed", "--port", str(port["feed"])],
        ports=(port["feed"],),
    )
    transformer = procs.start(
        "transformer",
        [sys.executable, "-m", "relearn.serving.transformer"],
        ports=(port["transformer_http"], port["transformer_grpc"]),
        RELEARN_TRANSFORMER_HOST="127.0.0.1",
        RELEARN_TRANSFORMER_HTTP_PORT=str(port["transformer_http"]),
        RELEARN_TRANSFORMER_GRPC_PORT=str(port["transformer_grpc"]),
        RELEARN_TRANSFORMER_PREDICTOR_HOST=f"127.0.0.1:{port['router_grpc']}",
        # One machine runs the retraining pipeline (its state bootstrap included) beside serving: give the
        # state's lock more than the default second before a request is refused (in a cluster they do not
        # share cores).
        RELEARN_TRANSFORMER_FEATURE_TIMEOUT_SECONDS="3",
        RELEARN_TRANSFORMER_LOG_LEVEL="WARNING",
    )
    stack.scrape("drift-detector", port["detector"])
    stack.scrape("transformer", port["transformer_http"])
    stack.scrape("feature-feed", port["feed"])
    prometheus_config(home / "prometheus" / "prometheus.yml", home / "prometheus" / "targets.json")
    prometheus = procs.start(
        "prometheus",
        [settings.prometheus, f"--config.file={home / 'prometheus' / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'prometheus' / 'data'}",
         f"--web.listen-address=127.0.0.1:{port['prometheus']}", "--log.level=warn"],
        ports=(port["prometheus"],),
    )  # fmt: skip
    for child, url in (
        (mlflow, stack.url("mlflow") + "/health"),
        (predictor, rest + "/v2/health/ready"),
        (router, stack.url("router_rest") + "/v2/health/ready"),
        (transformer, stack.url("transformer_http") + "/v2/health/ready"),
        (feed, stack.url("feed") + "/healthz"),
        (prometheus, stack.url("prometheus") + "/-/ready"),
        (detector, stack.url("detector") + "/ready"),
    ):
        procs.wait_http(child, url, timeout=180)
    argv, env = controller_command(settings, wall_per_day, _options(
        backend="local", state=stack.state, prometheus_url=stack.url("prometheus"),
        interval_seconds=settings.analysis_interval_seconds, window=settings.analysis_window,
        detector_url=stack.url("detector"), audit_log=home / "rollout" / "audit.jsonl",
        inference_log=inference_log(home)))  # fmt: skip
    procs.start("rollout-controller", argv, **env)
    return stack


def _alias_version(alias: str, home: Path) -> str:
    from relearn.model.registry import get_alias_version
    from relearn.settings import RelearnSettings

    version = get_alias_version(RelearnSettings(home=home), alias)
    if version is None:
        raise StackError(f"no model version holds the alias {alias!r}")
    return str(version)


# ----------------------------------------------------------------------------------------------- loop
@dataclass
class Outcome:
    """What the run produced, for the report and the tests."""

    settings: DemoSettings
    home: Path  # MLflow, Feast and logs of this run
    world: World
    timeline: Timeline
    records: pd.DataFrame  # the stream's rows with what the endpoint answered
    windows: list[dict[str, Any]]  # drift windows seen on the detector, with the wall time seen
    quality: list[dict[str, Any]]  # the detector's labelled quality over time
    audit: list[dict[str, Any]]  # the rollout audit trail
    failures: list[str]
    ports_left_open: list[int]
    left_running: list[str]
    champion_before: str
    champion_after: str
    interrupted: bool = False


class _Detector:
    """Polls the detector's ``/status``: drift windows and labelled quality over time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.windows: dict[tuple[str, int], dict[str, Any]] = {}
        self.quality: list[dict[str, Any]] = []

    def poll(self, client: httpx.Client) -> None:
        try:
            status = client.get(f"{self.url}/status", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return
        now = time.time()
        for track, records in (status.get("windows") or {}).items():
            for record in records:
                self.windows.setdefault((track, record["index"]), {**record, "track": track, "wall": now})
        stable = (status.get("quality") or {}).get("stable")
        if stable:
            self.quality.append({"wall": now, **stable})


def _skew(detector_url: str) -> dict[str, Any]:
    """The detector's last skew check: rows compared and the features whose served values differ."""
    try:
        text = httpx.get(f"{detector_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {"rows": None}
    rows, skewed = None, {}
    for line in text.splitlines():
        if line.startswith('relearn_feature_skew_rows{track="stable"}'):
            rows = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("relearn_feature_skew_ratio{") and 'track="stable"' in line:
            ratio = float(line.rsplit(" ", 1)[1])
            if ratio > 0:
                skewed[line.split('feature="', 1)[1].split('"', 1)[0]] = ratio
    return {"rows": rows, "skewed": skewed}


def run(settings: DemoSettings) -> Outcome:
    """Run the loop; always stops every process. Ctrl-C ends it early (the report covers what ran)."""
    timeline = Timeline()
    world = build(settings)
    timeline.add("world", rows=len(world.stream), labels=len(world.labels), key=world.key)
    home = settings.home.resolve() / "run"
    summary = first_champion(settings, world, home, show=settings.progress)
    champion_before = str(summary["model_version"])
    timeline.add("champion", version=champion_before, headline=summary.get("headline"))
    served_per_day = len(world.stream) / settings.live_days
    wall_per_day = served_per_day / settings.rate
    procs = Processes(home / "logs", _env(home))
    try:
        if settings.state == "redis":
            redis_state(settings, procs, home, world.source)
        stack = start_stack(settings, home, wall_per_day, procs, lake=world.source)
    except BaseException:
        procs.stop_all()
        raise
    alerts: queue.Queue = queue.Queue()
    webhook = AlertWebhook(stack.ports["webhook"], alerts)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    detector = _Detector(stack.url("detector"))
    replay = Replay(
        world.stream,
        world.labels,
        f"127.0.0.1:{stack.ports['transformer_grpc']}",
        stack.url("detector"),
        settings.rate,
        stack.url("feed"),
        world.feed,
        world.chargebacks,
    )
    stop = threading.Event()
    crashed: list[BaseException] = []

    def send() -> None:
        try:
            replay.run(stop, until=driver.done)
        except Exception as exc:  # surfaced by the main loop: the demo stops and says why
            crashed.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    driver = _Driver(settings, stack, timeline, replay, world, home)
    interrupted = False
    bar = progress_bar(
        total=len(world.stream), unit="tx", desc="replay", disable=not settings.progress, file=sys.stderr
    )
    timeline.add("replay-start", sim=pd.Timestamp(world.history_end))
    sender.start()
    deadline = time.monotonic() + settings.max_minutes * 60
    try:
        with httpx.Client() as client:
            while sender.is_alive() and time.monotonic() < deadline:
                time.sleep(0.5)
                stack.procs.check()
                detector.poll(client)
                while not alerts.empty():
                    driver.alert(*alerts.get())
                driver.tick()
                bar.update(replay.position - bar.n)
                bar.set_postfix_str(driver.status(), refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        timeline.add("interrupted", sim=replay.sim_time)
    finally:
        stop.set()
        sender.join(10)
        replay.drain()
        bar.close()
        timeline.add(
            "replay-end",
            sim=replay.sim_time,
            sent=replay.position,
            fed=replay.fed,
            chargebacks_fed=replay.chargebacks_fed,
            feed_refused=replay.feed_refused,
        )
        driver.close()
        with httpx.Client() as client:
            detector.poll(client)
        if crashed:
            timeline.add("replay-failed", sim=replay.sim_time, error=repr(crashed[0]))
            log.error("replay failed", exc_info=crashed[0])
        timeline.add("feature-skew", **_skew(stack.url("detector")))
        audit = _read_audit(home / "rollout" / "audit.jsonl")
        champion_after = _alias_version("champion", home)
        left = stack.procs.stop_all()
        running = left_running(stack.procs.children)
        webhook.shutdown()
        webhook.server_close()
        timeline.add("stopped", ports_left_open=left, left_running=running)
    records = pd.concat([world.stream.reset_index(drop=True), replay.record.frame()], axis=1)
    return Outcome(
        settings=settings,
        home=home,
        world=world,
        timeline=timeline,
        records=records.iloc[: replay.position],
        windows=sorted(detector.windows.values(), key=lambda w: (w["track"], w["index"])),
        quality=detector.quality,
        audit=audit,
        failures=replay.failures,
        ports_left_open=left,
        left_running=running,
        champion_before=champion_before,
        champion_after=champion_after,
        interrupted=interrupted,
    )


def _read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _Driver:
    """Reacts to alerts (retraining, deployment of the challenger) and follows the rollout's state."""

    def __init__(
        self,
        settings: DemoSettings,
        stack: Stack,
        timeline: Timeline,
        replay: Replay,
        world: World,
        home: Path,
    ) -> None:
        from relearn.rollout.router import LocalBackend

        self.settings, self.stack, self.timeline = settings, stack, timeline
        self.replay, self.world, self.home = replay, world, home
        self.backend = LocalBackend(stack.state)
        self.phase = "replay"
        self.alerts = 0
        self.retraining: threading.Thread | None = None
        self.retrain_result: dict[str, Any] | None = None
        self.retrains = 0
        self.response = "retrain"
        self.retrain_at: pd.Timestamp | None = None
        self.onset_seen = False
        self.last_state: tuple[Any, ...] = ()
        self.decided: pd.Timestamp | None = None  # stream time of the promotion or rollback
        self.after = pd.Timedelta(days=settings.after_decision_days)

    def status(self) -> str:
        state = self.backend.state()
        parts = [self.phase, f"champion v{state.stable}", f"alerts {self.alerts}"]
        if state.shadow:
            parts.append(f"shadow v{state.shadow}")
        if state.canary:
            parts.append(f"canary v{state.canary} {state.canary_percent}%")
        record, n = self.replay.record, self.replay.position
        parts.append(f"errors {int(failed(record.code[:n], record.invalid[:n]).sum())}")
        return " | ".join(parts)

    def alert(self, wall: float, data: dict[str, Any]) -> None:
        """An incident from the detector: record it; retrain on the first one of the stable track."""
        self.alerts += 1
        sim = self.replay.sim_time
        self.timeline.add("alert", sim=sim, alert_kind=data.get("kind"), track=data.get("track"), data=data)
        stable = data.get("track", "stable") == "stable"
        if stable and data.get("response") == "page" and self.retraining is None:  # cancel a waiting retrain
            self.retrain_at = None
        busy = self.retraining is not None or self.retrain_at is not None
        if not stable or busy or sim is None:
            return
        self.response = data.get("response", "retrain")  # relearn.monitoring.response's choice
        if self.response == "page":  # a data bug: paged, never trained on
            self.phase = "paged: data bug, no retraining"
            return
        self.retrain_at = sim + pd.Timedelta(days=self.settings.retrain_after_days)
        self.phase = f"alerted: retraining at {self.retrain_at:%m-%d %H:%M}"

    def _start_retraining(self, sim: pd.Timestamp) -> None:
        self.retrains += 1
        self.retrain_at = None
        self.phase = "retraining"
        end = sim.floor("min")
        start = end - pd.Timedelta(days=self.settings.retrain_days)
        self.timeline.add(
            "retrain-start", sim=sim, window_start=start.isoformat(), window_end=end.isoformat(),
            response=self.response,
        )  # fmt: skip
        self.retraining = threading.Thread(target=self._retrain, args=(start,), daemon=True)
        self.retraining.start()

    def _retrain(self, start: pd.Timestamp) -> None:
        argv = pipeline_argv(self.settings, self.world.source, start, self.settings.retrain_days, self.home)
        if self.response == "recalibrate":  # same weights, threshold re-fitted on the labelled traffic
            wall_per_day = len(self.world.stream) / self.settings.live_days / self.settings.rate
            argv = recalibrate_argv(self.settings, wall_per_day, self.home, self.retrains)
        child = self.stack.procs.start(f"retrain-{self.retrains}", argv)  # stopped with the stack
        self.retrain_result = pipeline_summary(argv, child.process.wait(), child.log)

    def tick(self) -> None:
        """Follow up on a finished retraining and on the router's state (the controller's actions)."""
        sim = self.replay.sim_time
        if not self.onset_seen and sim is not None and sim >= pd.Timestamp(self.world.onset):
            self.onset_seen = True
            self.timeline.add("onset", sim=sim, scenario=self.settings.scenario)
        if self.retrain_at is not None and sim is not None and sim >= self.retrain_at:
            self._start_retraining(sim)
        if self.retraining is not None and not self.retraining.is_alive() and self.retrain_result is not None:
            self._deploy(self.retrain_result)
            self.retrain_result = None
            self.retraining = None
        state = self.backend.state()
        key = (state.stable, state.canary, state.canary_percent, state.shadow)
        if key != self.last_state:
            promoted = self.last_state and state.stable != self.last_state[0]
            rolled_back = self.last_state and self.last_state[1] and state.canary is None and not promoted
            if (promoted or rolled_back) and self.decided is None:
                self.decided = sim
                self.timeline.add("promoted" if promoted else "rolled-back", sim=sim, **state.to_dict())
            if self.last_state:
                self.timeline.add("rollout-state", sim=sim, **state.to_dict())
                self._phase_of(state)
            self.last_state = key

    def done(self) -> bool:
        """Whether the replay can stop: the rollout was decided ``after_decision_days`` ago."""
        sim = self.replay.sim_time
        return self.decided is not None and sim is not None and sim >= self.decided + self.after

    def _phase_of(self, state: Any) -> None:
        if state.canary:
            self.phase = f"canary v{state.canary}"
        elif state.shadow:
            self.phase = f"shadow v{state.shadow}"
        else:
            self.phase = "replay"

    def _deploy(self, result: dict[str, Any]) -> None:
        from relearn.rollout.controller import ControllerSettings
        from relearn.rollout.deploy import deploy

        sim = self.replay.sim_time
        if "error" in result:
            self.timeline.add("retrain-failed", sim=sim, error=result["error"])
            self.phase = "replay"
            return
        version, gate = str(result["model_version"]), result["gate"]
        passed = gate.startswith("PASSED")
        self.timeline.add("retrain-end", sim=sim, version=version, gate=gate, headline=result.get("headline"))
        if not passed:
            self.phase = "replay"
            return
        self.phase = f"starting v{version}"
        _, rest, grpc_target = start_predictor(self.stack, version)
        self.backend.register(version, rest=rest, grpc=grpc_target)
        if self.settings.experiment == "ab":  # an A/B test instead of shadow and canary
            from relearn.demo.experiment import start_in_demo

            self.timeline.add("experiment-start", sim=sim, **start_in_demo(self, version))
            self.phase = f"A/B test v{version}"
            return
        settings = ControllerSettings(
            backend="local", state=self.stack.state, audit_log=self.home / "rollout" / "audit.jsonl"
        )
        done = deploy(
            version, gate_passed=True, rollout_mode="shadow", settings=settings, backend=self.backend
        )
        self.timeline.add("deploy", sim=sim, version=version, action=done.action, reason=done.reason)
        self.phase = f"shadow v{version}"

    def close(self) -> None:
        """Wait briefly for a retraining still running (its process is stopped with the stack)."""
        if self.retraining is not None:
            self.retraining.join(1)
