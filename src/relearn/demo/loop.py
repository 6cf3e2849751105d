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
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from relearn.demo.pipeline import child_env, first_champion, pipeline_argv, pipeline_summary, redis_state
from relearn.demo.replay import Replay, failed
from relearn.demo.respond import AlertWebhook, recalibrate_argv
from relearn.demo.services import Stack, alias_version, start_predictor, start_stack
from relearn.demo.settings import DemoSettings
from relearn.demo.stack import (
    Processes,
    left_running,
)
from relearn.demo.world import World, build
from relearn.logs import progress_bar

log = logging.getLogger(__name__)


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
            for record in records:  # updated in place: ``realized`` joins a window once its labels mature
                seen = self.windows.get((track, record["index"]))
                wall = seen["wall"] if seen else now
                self.windows[(track, record["index"])] = {**record, "track": track, "wall": wall}
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
    procs = Processes(home / "logs", child_env(home))
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
        champion_after = alias_version("champion", home)
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
        from relearn.rollout.local_backend import LocalBackend

        self.settings, self.stack, self.timeline = settings, stack, timeline
        self.replay, self.world, self.home = replay, world, home
        self.backend = LocalBackend(stack.state)
        self.phase = "replay"
        self.alerts = 0
        self.retraining: threading.Thread | None = None
        self.retrain_result: dict[str, Any] | None = None
        self.retrains = 0
        self.response = "retrain"
        self.train_mode = "scratch"
        self.retrain_at: pd.Timestamp | None = None
        self.gate_failed = False  # a retraining was refused: the next alert retries at once, on newer labels
        self.onset_seen = False
        self.last_state: tuple[Any, ...] = ()
        self.decided: pd.Timestamp | None = None  # stream time of the promotion, rollback or page
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
        self.train_mode = data.get("train_mode", "scratch")  # covariate drift: fine-tune the champion
        if self.response == "page":  # a data bug: paged, never trained on; the loop's decision
            self.phase = "paged: data bug, no retraining"
            if self.decided is None:
                self.decided = sim
                self.timeline.add("paged", sim=sim)
            return
        wait = 0.0 if self.gate_failed else self.settings.retrain_after_days  # labels kept maturing since
        self.retrain_at = sim + pd.Timedelta(days=wait)
        self.phase = f"alerted: retraining at {self.retrain_at:%m-%d %H:%M}"

    def _start_retraining(self, sim: pd.Timestamp) -> None:
        self.retrains += 1
        self.retrain_at = None
        self.phase = "retraining"
        end = sim.floor("min")
        start = end - pd.Timedelta(days=self.settings.retrain_days)
        self.timeline.add(
            "retrain-start", sim=sim, window_start=start.isoformat(), window_end=end.isoformat(),
            response=self.response, train_mode=self.train_mode,
        )  # fmt: skip
        self.retraining = threading.Thread(target=self._retrain, args=(start,), daemon=True)
        self.retraining.start()

    def _retrain(self, start: pd.Timestamp) -> None:
        argv = pipeline_argv(
            self.settings, self.world.source, start, self.settings.retrain_days, self.home, self.train_mode
        )
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
            self.gate_failed, self.phase = True, "replay"
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
