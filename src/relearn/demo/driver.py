"""The demo's driver and its timeline.

The driver acts on the detector's alerts (retraining, deploying the challenger) and follows the rollout the
controller runs, on the stream's clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from relearn.demo.pipeline import pipeline_argv, pipeline_summary
from relearn.demo.replay import Replay, failed
from relearn.demo.respond import recalibrate_argv
from relearn.demo.services import Stack, start_predictor
from relearn.demo.settings import DemoSettings
from relearn.demo.world import World

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


class Driver:
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
        self.deployed = False  # a challenger was deployed (shadow or A/B): no further retraining
        self.response = "retrain"
        self.train_mode = "scratch"
        self.retrain_at: pd.Timestamp | None = None
        self.refused_at: pd.Timestamp | None = None  # stream time of the last retraining the gate refused
        self.onset_seen = False
        self.last_state: tuple[Any, ...] = ()
        self.decided: pd.Timestamp | None = None  # stream time of the promotion, rollback or page
        self.after = pd.Timedelta(days=settings.after_decision_days)

    def status(self) -> str:
        """One line for the progress bar: phase, versions, alerts, errors."""
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
        # One challenger at a time: a retraining holds the stream, which would starve a running rollout.
        busy = self.retraining is not None or self.retrain_at is not None or self.deployed
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
        # The drifted data needs its chargebacks: retrain_after_days after the alert or, after a refusal,
        # after the refused run (the stream held while it ran, so no label has matured since).
        wait = pd.Timedelta(days=self.settings.retrain_after_days)
        self.retrain_at = sim + wait if self.refused_at is None else max(sim, self.refused_at + wait)
        self.phase = f"alerted: retraining at {self.retrain_at:%m-%d %H:%M}"

    def _start_retraining(self, sim: pd.Timestamp) -> None:
        self.retrains += 1
        self.retrain_at = None
        # The stream's clock holds while the pipeline runs. In production a retraining takes hours, a small
        # part of a stream day; here it takes minutes, i.e. a week or more of the demo's compressed days,
        # so the old champion would serve that much drifted traffic and the outcome would hang on the
        # machine's speed. Nothing is served meanwhile, so no prediction is stamped inside the pause and
        # the backtest (traffic since the training began) never mixes paused and running time.
        self.replay.held.set()
        self.phase = "retraining (stream held)"
        end = sim.floor("min")
        start = end - pd.Timedelta(days=self.settings.retrain_days)
        self.timeline.add(
            "retrain-start", sim=sim, window_start=start.isoformat(), window_end=end.isoformat(),
            response=self.response, train_mode=self.train_mode,
        )  # fmt: skip
        self.retraining = threading.Thread(target=self._retrain, args=(start,), daemon=True)
        self.retraining.start()

    def _retrain(self, start: pd.Timestamp) -> None:
        try:
            self.retrain_result = self._run_pipeline(start)
        except Exception as exc:  # reported by tick() as a failed retraining; the stream runs on
            log.exception("retraining failed")
            self.retrain_result = {"error": repr(exc)}

    def _run_pipeline(self, start: pd.Timestamp) -> dict[str, Any]:
        argv = pipeline_argv(
            self.settings, self.world.source, start, self.settings.retrain_days, self.home, self.train_mode
        )
        if self.response == "recalibrate":  # same weights, threshold re-fitted on the labelled traffic
            wall_per_day = self.world.wall_per_day(self.settings)
            argv = recalibrate_argv(self.settings, wall_per_day, self.home, self.retrains)
        child = self.stack.procs.start(f"retrain-{self.retrains}", argv)  # stopped with the stack
        return pipeline_summary(argv, child.process.wait(), child.log)

    def tick(self) -> None:
        """Follow up on a finished retraining and on the router's state (the controller's actions)."""
        sim = self.replay.sim_time
        if not self.onset_seen and sim is not None and sim >= pd.Timestamp(self.world.onset):
            self.onset_seen = True
            self.timeline.add("onset", sim=sim, scenario=self.settings.scenario)
        if self.retrain_at is not None and sim is not None and sim >= self.retrain_at:
            self._start_retraining(sim)
        if self.retraining is not None and not self.retraining.is_alive():
            try:
                if self.retrain_result is not None:
                    self._deploy(self.retrain_result)
            finally:  # served, refused or failed: the stream's clock runs again
                self.retrain_result = None
                self.retraining = None
                self.replay.held.clear()
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
            self.refused_at, self.phase = sim, "replay"
            return
        self.phase = f"starting v{version}"
        self.deployed = True
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
