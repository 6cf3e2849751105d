"""The whole loop on one machine: ``run(DemoSettings())`` (``make demo``, ``relearn-demo``).

1. The world (history + live stream, cached) and the first champion: the training pipeline under kfp.local
   on the history (cached too, so a second run starts from the same champion).
2. The local stack on loopback: drift detector (its own environment), predictor, router, transformer,
   Prometheus scraping them, and the rollout controller.
3. The replay sends the live stream through the transformer's gRPC endpoint; the scenario starts part-way.
4. An alert of the drift detector (input drift or a quality drop found through the chargebacks) reaches the
   demo's webhook; the driver (:mod:`relearn.demo.driver`) runs the training pipeline on the recent data,
   the stream's clock held meanwhile. A challenger that passes the gate is
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from relearn.demo.driver import Driver, Timeline
from relearn.demo.pipeline import child_env, first_champion, redis_state
from relearn.demo.replay import Replay
from relearn.demo.respond import AlertWebhook
from relearn.demo.services import alias_version, start_stack
from relearn.demo.settings import DemoSettings
from relearn.demo.stack import Processes, left_running
from relearn.demo.world import World, build
from relearn.logs import progress_bar

log = logging.getLogger(__name__)


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
    wall_per_day = world.wall_per_day(settings)
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
    driver = Driver(settings, stack, timeline, replay, world, home)
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
