"""The demo's stack on loopback, started in order with its ports and scrape targets.

MLflow, the predictors, the transformer, the feature feed, the drift detector, Prometheus, the router
and the rollout controller.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from relearn.commands import cli_options
from relearn.demo.controller import controller_command, inference_log
from relearn.demo.settings import DemoSettings
from relearn.demo.stack import (
    Child,
    Processes,
    StackError,
    free_port,
    prometheus_config,
    write_targets,
)
from relearn.routing import SHADOW_SUFFIX

log = logging.getLogger(__name__)

MODEL = "relearn-fraud"
SHADOW_SERVICE = f"{MODEL}{SHADOW_SUFFIX}"


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


LATE_WALL_SECONDS = 30.0


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
    from relearn.rollout.local_backend import LocalBackend

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
         *cli_options(host="127.0.0.1", port=port["mlflow"], backend_store_uri=store)],
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
    champion = alias_version("champion", home)
    predictor, rest, grpc_target = start_predictor(stack, champion, wait=False)
    LocalBackend(stack.state).register(champion, rest=rest, grpc=grpc_target)  # the first one is stable
    router = procs.start(
        "router",
        [sys.executable, "-m", "relearn.rollout.router", *cli_options(
            state=stack.state, seed=settings.seed, rest_port=port["router_rest"],
            grpc_port=port["router_grpc"])],
        ports=(port["router_rest"], port["router_grpc"]),
    )  # fmt: skip
    # The replay packs a stream day into ``wall_per_day`` seconds, so a request a loaded machine holds up
    # for one wall second is over an hour late in stream time: the feed and the transformer accept events
    # LATE_WALL_SECONDS of wall clock behind the stream (production keeps the default hour).
    lateness = max(3600.0, LATE_WALL_SECONDS * 86400.0 / wall_per_day)
    procs.env["RELEARN_STATE_LATENESS_SECONDS"] = f"{lateness:.0f}"
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
    argv, env = controller_command(settings, wall_per_day, cli_options(
        backend="local", state=stack.state, prometheus_url=stack.url("prometheus"),
        interval_seconds=settings.analysis_interval_seconds, window=settings.analysis_window,
        detector_url=stack.url("detector"), audit_log=home / "rollout" / "audit.jsonl",
        inference_log=inference_log(home)))  # fmt: skip
    procs.start("rollout-controller", argv, **env)
    return stack


def alias_version(alias: str, home: Path) -> str:
    """The model version that holds ``alias`` in the demo's registry."""
    from relearn.model.registry import get_alias_version
    from relearn.settings import RelearnSettings

    version = get_alias_version(RelearnSettings(home=home), alias)
    if version is None:
        raise StackError(f"no model version holds the alias {alias!r}")
    return str(version)
