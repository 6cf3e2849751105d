"""One incident → one trigger: the cool-down suppresses repeats; the webhook gets a CloudEvent."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from relearn.monitoring.alerts import ALERT_TYPE, Alerter


def test_cooldown_fires_once_per_incident_and_posts_cloudevent():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append({k.lower(): v for k, v in self.headers.items()})
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    now = [1000.0]
    runs: list[dict] = []
    try:
        alerter = Alerter(600, f"http://127.0.0.1:{httpd.server_port}/", runs.append, clock=lambda: now[0])
        fired = []
        for step in range(10):  # a drift episode over 10 windows, 30 s apart
            now[0] = 1000.0 + 30 * step
            fired.append(alerter.incident({"kind": "drift", "window": step}))
        now[0] = 1000.0 + 700  # after the cool-down: a new incident fires again
        fired.append(alerter.incident({"kind": "drift", "window": 99}))
    finally:
        httpd.shutdown()
    assert fired == [True] + [False] * 9 + [True]
    assert len(runs) == 2 and len(received) == 2
    assert received[0]["ce-type"] == ALERT_TYPE
