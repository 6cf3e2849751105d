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
    """The report's lines: the chosen responses of the stable track's alerts, in order (repeats merged)."""
    lines: list[str] = []
    last = None
    for item in items:
        if item.get("track", "stable") != "stable":
            continue
        line = f"response to the {item['kind']} alert: {item['response']} ({item['why']})"
        if line != last:
            lines.append(f"at {(item.get('sim') or '')[:16].replace('T', ' ')}, {line}")
        last = line
    return lines
