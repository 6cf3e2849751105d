"""What the demo does with each incident's response (:mod:`relearn.monitoring.response`); report lines.

:class:`AlertWebhook` receives the drift detector's alert CloudEvents. Each alert says ``response`` and
``why``: ``retrain`` runs the training pipeline on the recent window (as before), ``recalibrate`` runs
:mod:`relearn.model.recalibrate` on the labelled traffic of the detector's inference log, and ``page``
starts nothing (a data bug). A retrained or recalibrated version then takes the same shadow → canary →
promotion path.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from relearn.demo.controller import inference_log
from relearn.demo.settings import DemoSettings


class AlertWebhook(ThreadingHTTPServer):
    """Receives the drift detector's alert CloudEvents (its ``webhook_url``)."""

    def __init__(self, port: int, alerts: queue.Queue) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    alerts.put((time.time(), json.loads(body or b"{}")))
                    self.send_response(202)
                except ValueError:
                    self.send_response(400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


def recalibrate_argv(settings: DemoSettings, wall_per_day: float, home: Path, n: int) -> list[str]:
    """``python -m relearn.model.recalibrate`` on the demo detector's log; summary to JSON."""
    return [
        sys.executable, "-m", "relearn.model.recalibrate",
        "--inference-log", str(inference_log(home)),
        "--maturity-seconds", str(settings.label_maturity_days * wall_per_day),
        "--limit", str(settings.quality_window * 2),
        "--min-rows", str(min(1000, settings.quality_window)),
        "--alert-budget", str(settings.alert_budget),
        "--summary-json", str(home / "pipeline_runs" / f"recalibrate-{n}.json"),
    ]  # fmt: skip


def responses(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alert's response: stream time, incident kind, response, why (the report's list)."""
    out = []
    for event in events:
        if event["kind"] == "alert":
            data = event.get("data") or {}
            out.append(
                {
                    "sim": event.get("sim"),
                    "kind": data.get("kind"),
                    "track": data.get("track"),
                    "response": data.get("response", "retrain"),
                    "why": data.get("why", ""),
                }
            )
    return out


def response_lines(items: list[dict[str, Any]]) -> list[str]:
    """The report's lines: one per episode of the stable track's alerts, in order.

    An episode is a run of alerts of the same kind answered the same way: the detector re-posts an open
    incident each window (with new figures in its why), which is one decision, not several. The line keeps
    the first alert's why and says how many followed and until when.
    """
    episodes: list[list[dict[str, Any]]] = []
    for item in items:
        if item.get("track", "stable") != "stable":
            continue
        last = episodes[-1][0] if episodes else None
        if last is not None and (last["kind"], last["response"]) == (item["kind"], item["response"]):
            episodes[-1].append(item)
        else:
            episodes.append([item])
    lines = []
    for first, *more in episodes:
        line = (
            f"at {_when(first)}, response to the {first['kind']} alert: {first['response']} ({first['why']})"
        )
        if more:
            line += f"; {len(more)} more alert(s) of this episode until {_when(more[-1])}"
        lines.append(line)
    return lines


def _when(item: dict[str, Any]) -> str:
    return (item.get("sim") or "")[:16].replace("T", " ")
