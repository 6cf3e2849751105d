"""A real HTTP server on loopback playing the Kubernetes API server for custom objects, without a cluster.

The official ``kubernetes`` client talks to it over HTTP; the server records every request (method, path,
content type, body), creates (POST to the collection), reads (GET), merge-patches (PATCH, RFC 7386, as the API
server applies ``application/merge-patch+json``) and deletes (DELETE) objects, and validates every created or
patched object against the upstream CRD schemas in ../shared/crds, closed against unknown fields (422 else).
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support.crds import crd_errors

MERGE = "application/merge-patch+json"


class _Forbidden(Exception):
    """A request the authorizer refused (already answered 403)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server applies for application/merge-patch+json)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeApiServer:
    """Stored custom objects by path, and every request made to them.

    Args:
        objects: ``{path: object}`` at the start (``/apis/<group>/<version>/namespaces/<ns>/<plural>/<n>``).
        on_create: Called with ``(path, object)`` after a create, e.g. to play an operator setting the status.
    """

    def __init__(
        self,
        objects: dict[str, dict[str, Any]] | None = None,
        on_create: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        authorize: Callable[[str | None, str, str], str | None] | None = None,
        address: tuple[str, int] = ("127.0.0.1", 0),
        tls: tuple[str, str] | None = None,
    ) -> None:
        """``authorize(bearer token, method, path)`` returns the caller's name, or None for a 403 (RBAC);
        ``tls``: (certificate, key) files, to serve HTTPS as an API server does to in-cluster clients."""
        self.objects = objects if objects is not None else {}
        self.on_create = on_create
        self.authorize = authorize
        self.requests: list[dict[str, Any]] = []
        self.rejected: list[list[str]] = []
        self.forbidden: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, message: str = "") -> None:
                self._answer(code, {"kind": "Status", "code": code, "message": message})

            def _record(self, method: str) -> Any:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw) if raw else None
                ctype = self.headers.get("Content-Type") if raw else None
                request = {"method": method, "path": self.path, "content_type": ctype, "body": body}
                if outer.authorize is not None:
                    scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                    token = token if scheme.lower() == "bearer" else None  # the client sends "bearer <token>"
                    request["user"] = outer.authorize(token, method, self.path.split("?")[0])
                    if request["user"] is None:
                        outer.forbidden.append(request)
                        self._status(403, f"forbidden: {method} {self.path}")
                        raise _Forbidden
                outer.requests.append(request)
                return body

            def handle_one_request(self) -> None:
                try:
                    with outer.lock:  # one request at a time: read-modify-write patches stay atomic
                        super().handle_one_request()
                except _Forbidden:
                    pass

            def _store(self, path: str, obj: dict[str, Any]) -> bool:
                """Validates against the CRD; stores and answers 200/201 when valid, else answers 422."""
                errors = crd_errors(obj) if path.startswith("/apis/") else []  # core objects: no CRD
                if errors:
                    outer.rejected.append(errors)
                    self._status(422, "; ".join(errors))
                    return False
                outer.objects[path] = obj
                return True

            def do_GET(self) -> None:
                self._record("GET")
                obj = outer.objects.get(self.path)
                self._answer(200, obj) if obj else self._status(404)

            def do_POST(self) -> None:
                body = self._record("POST")
                path = f"{self.path.split('?')[0]}/{body['metadata']['name']}"
                if path in outer.objects:
                    return self._status(409, "AlreadyExists")
                if self._store(path, body):
                    self._answer(201, body)
                    if outer.on_create is not None:
                        outer.on_create(path, body)

            def do_PATCH(self) -> None:
                body = self._record("PATCH")
                if self.path not in outer.objects:
                    return self._status(404)
                if self.headers.get("Content-Type") != MERGE:
                    return self._status(415)
                new = merge_patch(outer.objects[self.path], body)
                if self._store(self.path, new):
                    self._answer(200, new)

            def do_DELETE(self) -> None:
                self._record("DELETE")
                if outer.objects.pop(self.path, None) is None:
                    return self._status(404)
                self._answer(200, {"kind": "Status", "status": "Success"})

        self.server = ThreadingHTTPServer(address, Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://{address[0]}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` that talks to this server."""
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.url))

    def kubeconfig(self, path: Path, token: str | None = None, ca: Path | None = None) -> Path:
        """A kubeconfig for this server, what a user's kubectl (or ``KUBECONFIG``) points the client at."""
        cluster = f"server: '{self.url}'" + (f", certificate-authority: '{ca}'" if ca else "")
        user = f"token: '{token}'" if token else ""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n"
            f"clusters: [{{name: stand-in, cluster: {{{cluster}}}}}]\n"
            f"users: [{{name: user, user: {{{user}}}}}]\n"
            "contexts: [{name: stand-in, context: {cluster: stand-in, user: user}}]\n"
        )
        return path

    def patches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "PATCH"]
