"""Knative's part of a KServe canary: predictor revisions and the per-request traffic split between them.

KServe (Serverless) turns a change of the predictor's template into a new Knative revision, and
``canaryTrafficPercent`` into the route's traffic: the latest revision gets that share, the previously
rolled-out one the rest; without the field the latest gets everything (and becomes the rolled-out one); 0
sends everything back to the previous one (kserve pkg/controller/v1beta1/inferenceservice/reconcilers/
knative/ksvc_reconciler.go). The rehearsal watches the InferenceService in the stand-in API server, starts a
pod for each new revision, and routes the predictor Service per request (gRPC is one long connection, so a
TCP split would not do) with relearn's router in Knative's mode: no route marks reach the pods.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import grpc

from rehearsal import kserve
from rehearsal.cluster import Cluster
from relearn.rollout.local_backend import Endpoint, RouterState
from relearn.rollout.router import Router, grpc_handler


def _template(isvc: dict[str, Any]) -> str:
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class PredictorRevisions:
    """Revisions of one InferenceService's predictor and the route of ``<isvc>-predictor:80``."""

    def __init__(self, cluster: Cluster, objects: dict[str, dict[str, Any]], path: str, root: Path) -> None:
        self.cluster, self.objects, self.path = cluster, objects, path
        self.state_path = root / "predictor-route.json"
        self.revisions: list[tuple[str, str]] = []  # (template hash, pod name)
        self.rolled_out: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def adopt(self, pod_name: str) -> None:
        """The first revision, started with the rest of the release."""
        self.revisions.append((_template(self.objects[self.path]), pod_name))
        self.rolled_out = pod_name
        self._route(None)

    def serve(self, ip: str) -> None:
        """The route's gRPC listener on the Service address (replaces a TCP forwarder)."""
        handler = grpc_handler(Router(self.state_path, seed=7, mark_routes=False))

        async def start() -> Any:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(f"{ip}:80")
            await server.start()
            return server

        import asyncio

        self.server = asyncio.run_coroutine_threadsafe(start(), self.cluster.net.loop).result(10)
        self.thread.start()

    def _route(self, percent: int | None) -> None:
        pods = self.cluster.pods
        latest = self.revisions[-1][1]
        state = RouterState(
            endpoints={name: Endpoint(grpc=f"{pods[name].proc.ip}:8081") for _, name in self.revisions},
            stable=self.rolled_out,
        )
        if not pods[latest].ready():
            pass  # Knative routes to a revision only once it is ready
        elif percent is None:
            self.rolled_out = state.stable = latest
        elif latest != self.rolled_out:
            state.canary, state.canary_percent = latest, int(percent)
        current = RouterState.load(self.state_path) if self.state_path.exists() else None
        if current is None or vars(current) != vars(state):
            state.save(self.state_path)

    def reconcile(self) -> None:
        isvc = self.objects[self.path]
        if _template(isvc) != self.revisions[-1][0]:
            made = [
                p
                for p in kserve.pods(isvc, revision=len(self.revisions) + 1)
                if p["component"] == "predictor"
            ]
            pod = self.cluster.add_pod(made[0])
            self.revisions.append((_template(isvc), pod.name))
        self._route(isvc["spec"]["predictor"].get("canaryTrafficPercent"))

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            self.reconcile()

    def close(self) -> None:
        self.stop.set()
