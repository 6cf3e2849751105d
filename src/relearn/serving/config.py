"""Command-line settings of the serving processes (pydantic-settings; no kserve import here).

Every option is also an environment variable: ``RELEARN_PREDICTOR_<OPTION>`` /
``RELEARN_TRANSFORMER_<OPTION>`` (e.g. ``RELEARN_PREDICTOR_MODEL_URI``). MLflow and Feast locations come
from :class:`~relearn.settings.RelearnSettings` (``RELEARN_HOME``, ``RELEARN_MLFLOW_TRACKING_URI``,
``RELEARN_FEAST_*``).
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_CLI = {"cli_kebab_case": True, "cli_implicit_flags": True, "cli_hide_none_type": True, "extra": "ignore"}


S = TypeVar("S", bound=BaseSettings)  # the settings class run_cli parses into


class CommonServingSettings(BaseSettings):
    """Options both servers share (ports, model name, limits)."""

    http_port: int = Field(8080, ge=0, lt=65536, description="REST port (v1 and v2 protocol, /metrics).")
    grpc_port: int = Field(8081, ge=0, lt=65536, description="gRPC port (v2 GRPCInferenceService).")
    host: str = Field("0.0.0.0", description="Address the servers bind (127.0.0.1 for loopback only).")
    model_name: str = Field("relearn-fraud", description="Model name in the v1/v2 URLs and gRPC calls.")
    workers: int = Field(
        1, ge=0, description="REST worker processes (uvicorn); 0 (KServe's containerConcurrency 0) means 1."
    )
    max_batch_size: int = Field(1024, ge=1, description="Largest batch (rows) accepted; more is a 400.")
    log_level: str = Field("INFO", description="Log level of relearn's JSON logs.")
    grace_seconds: float = Field(
        5.0,
        ge=0,
        le=60,
        description="On SIGTERM, how long REST and gRPC calls in flight get to finish (new ones are refused) "
        "before the server stops, within the pod's terminationGracePeriodSeconds (30 s by default).",
    )


class ModelServingSettings(CommonServingSettings):
    """The settings of a server that loads the registered model (the predictor, the explainer)."""

    model_uri: str = Field(
        "models:/relearn-fraud@champion",
        description="models:/<name>@<alias> or models:/<name>/<version> (MLflow), or a local directory "
        "(the torch artifact, or a downloaded pyfunc model: the cluster storageUri case).",
    )
    model_version: str | None = Field(
        None, description="Version reported for a local directory (default: read from it, else 'local')."
    )


class PredictorSettings(ModelServingSettings):
    """relearn predictor: the fraud network behind KServe's v1/v2 REST and v2 gRPC endpoints.

    Every option can also be set as an environment variable RELEARN_PREDICTOR_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_PREDICTOR_", cli_prog_name="python -m relearn.serving.predictor", **_CLI
    )

    # Payload logging: only the predictor logs (its request holds the model inputs and the transaction ids
    # the transformer passes on, its response the scores), so one inference is one request/response pair.
    log_sink_url: str = Field("", description="Payload-logger CloudEvents target (empty: logging off).")
    log_queue_size: int = Field(100, ge=1, description="Payload-logger queue length (see log_when_full).")
    log_when_full: Literal["drop", "block"] = Field(
        "drop",
        description="When the sink is slow or down: drop (a full queue or a failed POST drops the events, "
        "counted in relearn_payload_log_dropped_total; predictions never wait) or block (a request waits for "
        "room in the queue, up to log_block_seconds, and failed POSTs are retried until they succeed: "
        "predictions slow down to the sink's pace instead of going unlogged).",
    )
    log_block_seconds: float = Field(
        30.0, gt=0, description="block: longest wait for queue room before the event is dropped (counted)."
    )
    log_linger_seconds: float = Field(
        0.01,
        ge=0,
        le=1,
        description="After the first queued event, how long the sender waits for more before it POSTs: "
        "fewer, larger batches for a little delay of the log (0: send at once).",
    )
    log_workers: int = Field(1, ge=1, description="Payload-logger sender threads (one connection each).")
    log_timeout_seconds: float = Field(2.0, gt=0, description="Timeout of one POST to the sink.")
    log_batch_size: int = Field(
        64,
        ge=1,
        description="Most events per POST to the sink: above 1, CloudEvents batched mode (relearn's drift "
        "detector); 1, one binary-mode event per POST, as KServe's logger sends them (any sink).",
    )
    log_drain_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, how long the queued events may take to reach the sink before the server "
        "exits (within the pod's terminationGracePeriodSeconds, 30 s by default).",
    )
    inference_service: str = Field("relearn-fraud", description="ce-inferenceservicename of logged events.")
    namespace: str = Field("default", description="ce-namespace of logged events.")
    endpoint: str = Field("default", description="ce-endpoint of logged events: default or canary.")


class TransformerSettings(CommonServingSettings):
    """relearn transformer: raw transactions in; streaming features, model inputs, predictor call; scores out.

    Every option can also be set as an environment variable RELEARN_TRANSFORMER_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_TRANSFORMER_", cli_prog_name="python -m relearn.serving.transformer", **_CLI
    )

    predictor_host: str = Field(
        "localhost:8081",
        description="host[:port] of the predictor's v2 gRPC; KServe injects '<isvc>-predictor.<ns>' "
        "(no port: the Knative/KServe Service's port 80).",
    )
    experiment_host: str | None = Field(
        None,
        description="host:port for arm-marked calls of an A/B experiment (the chart's experiment router, an "
        "Istio VirtualService on x-relearn-arm); default: predictor_host (the local router routes by arm).",
    )
    arm_assigner: str = Field(
        "relearn.experiments.routing:running_experiment",
        description="module:function building the A/B experiment's arm assigner at load "
        "(relearn.routing.ArmAssigner); empty: no experiments.",
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Decision threshold; default: the registered version's (the predictor's decision).",
    )
    feature_timeout_seconds: float = Field(
        1.0, gt=0, description="Streaming-state update and read timeout (then 503)."
    )
    predictor_timeout_seconds: float = Field(2.0, gt=0, description="Predictor gRPC call timeout (then 503).")
    feature_fallback: bool = Field(
        False,
        description="On a streaming-state failure score with cold-start defaults (counted in "
        "relearn_serving_feature_fallback_rows_total) instead of a 503.",
    )

    @field_validator("predictor_host")
    @classmethod
    def _service_port(cls, host: str) -> str:
        # gRPC would dial 443 for a bare host; KServe's predictor Service listens on 80 (h2c to the pod).
        return host if host.rpartition(":")[2].isdigit() else f"{host}:80"


def kserve_args(argv: list[str], settings: type[BaseSettings]) -> list[str]:
    """Accept the options KServe's controller appends to a container (``--model_name``, ``--http_port``, …).

    KServe writes them in snake case (pkg/constants/constants.go, ``ArgumentModelName`` …; appended by
    ``CustomTransformer.GetContainer`` in pkg/apis/serving/v1beta1/transformer_custom.go, KServe 0.15–0.16);
    our CLI is kebab case. Only names of ``settings`` fields are rewritten, so a typo still fails.
    """
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        field = name[2:].replace("-", "_") if name.startswith("--") else ""
        out.append(f"--{field.replace('_', '-')}{eq}{value}" if field in settings.model_fields else arg)
    return out


def run_cli(settings: type[S], argv: list[str] | None = None) -> S:
    """Parse ``argv`` (default: this process's args) into ``settings``; run its ``cli_cmd`` if it has one.

    KServe's injected options are accepted (:func:`kserve_args`). ``--help`` prints and exits.
    """
    from pydantic_settings import CliApp

    args = sys.argv[1:] if argv is None else argv
    return CliApp.run(settings, cli_args=kserve_args(args, settings))


def strip_argv() -> None:
    """kserve.model_server parses sys.argv when imported; our options are not its options."""
    del sys.argv[1:]
