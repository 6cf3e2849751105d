"""A stand-in for the KFP API server (none can run here): a real HTTP server on loopback.

It records every request as ``(method, path without query, JSON body)`` and answers what the real
``kfp.Client`` needs: the experiments it lists (``experiments``; a POST creates ``exp-1``), runs
(``run-42``) and recurring runs (lists ``recurring``; a POST creates ``rr-7``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class KfpApi(BaseHTTPRequestHandler):
    """Answers and records; the class attributes are the server's state (one server at a time)."""

    calls: ClassVar[list[tuple[str, str, dict]]] = []
    experiments: ClassVar[list[dict]] = []
    recurring: ClassVar[list[dict]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        path = self.path.split("?")[0]
        self.calls.append((self.command, path, body))
        reply: dict = {}
        if path.startswith("/apis/v2beta1/experiments"):
            reply = {"experiments": self.experiments} if self.command == "GET" else {"experiment_id": "exp-1"}
        elif path == "/apis/v2beta1/runs":
            reply = {"run_id": "run-42", "display_name": body.get("display_name")}
        elif path.startswith("/apis/v2beta1/recurringruns") and self.command == "GET":
            reply = {
                "recurringRuns": self.recurring
            }  # the proto's json_name (kfp_server_api's attribute_map)
        elif path.startswith("/apis/v2beta1/recurringruns") and self.command == "POST":
            reply = {"recurring_run_id": "rr-7", "display_name": body.get("display_name")}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer  # noqa: N815 (http.server's names)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def kfp_stand_in(experiments: list[dict] | None = None) -> Iterator[str]:
    """The stand-in on a free port with fresh state; yields its URL (``KfpApi.calls`` records)."""
    KfpApi.calls, KfpApi.experiments, KfpApi.recurring = [], list(experiments or []), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
