"""``python -m relearn.serving.local`` (``make serve``): the serving stack on loopback, from the champion.

Starts the predictor (``models:/<name>@champion`` from the local MLflow), the transformer (the streaming
state under ``RELEARN_HOME``) and the explainer (v1 ``:explain``) as child processes bound to 127.0.0.1,
waits until they are ready, prints the endpoints and example calls, and stops them all on Ctrl-C (or when
one exits).

Default ports: transformer 8080/8081 (KServe's), predictor 8082/8083, explainer 8087/8088 (``0``: none;
8084/8085 are the local rollout router's); the predictor's payload log goes to
``make drift``'s default address (``http://127.0.0.1:8090/``; events are dropped and counted while nothing
listens there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.logs import configure_logging

DRIFT_SINK = "http://127.0.0.1:8090/"  # `make drift` with its defaults (RELEARN_DRIFT_PORT)
EXAMPLE = {
    "transaction_id": "tx-demo-1",
    "event_timestamp": "2026-03-01T12:00:00Z",
    "user_id": "u000001",
    "merchant_id": "m00001",
    "amount": 42.5,
    "currency": "EUR",
    "merchant_category": "electronics",
    "channel": "ecommerce",
    "country": "DE",
    "device_id": "dev-1",
}


class LocalStackSettings(BaseSettings):
    """Run the local serving stack (predictor, transformer, explainer on 127.0.0.1) until Ctrl-C.

    Every option can also be set as an environment variable RELEARN_SERVE_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_SERVE_",
        cli_prog_name="python -m relearn.serving.local",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    transformer_http_port: int = Field(8080, description="Transformer REST port (the public endpoint).")
    transformer_grpc_port: int = Field(8081, description="Transformer gRPC port.")
    predictor_http_port: int = Field(8082, description="Predictor REST port.")
    predictor_grpc_port: int = Field(8083, description="Predictor gRPC port (the transformer calls it).")
    explainer_http_port: int = Field(8087, ge=0, description="Explainer REST port (v1 :explain); 0: none.")
    explainer_grpc_port: int = Field(8088, description="Explainer gRPC port.")
    model_uri: str = Field("models:/relearn-fraud@champion", description="Model the predictor serves.")
    model_name: str = Field("relearn-fraud", description="Model name in the URLs.")
    log_sink_url: str = Field(
        DRIFT_SINK,
        description="Payload-logger target (the predictor logs each inference): default the drift detector "
        "of `make drift`; empty: off.",
    )
    ready_timeout_seconds: float = Field(120.0, gt=0, description="How long to wait for readiness.")

    def cli_cmd(self) -> None:
        """Start both servers, print how to call them, wait for Ctrl-C."""
        run(self)


def _start(module: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", *args], env=os.environ.copy()
    )


def _wait_ready(url: str, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url}: not ready in time")


def usage(settings: LocalStackSettings) -> str:
    """The endpoints and example calls to print."""
    t_http, t_grpc = settings.transformer_http_port, settings.transformer_grpc_port
    name, body = settings.model_name, {"instances": [EXAMPLE]}
    e_http = settings.explainer_http_port
    explainer = f"REST http://127.0.0.1:{e_http}/v1/models/{name}:explain" if e_http else "off"
    return f"""
relearn serving stack (Ctrl-C stops it)
  transformer  REST http://127.0.0.1:{t_http}/v1/models/{name}:predict  (and /v2/models/{name}/infer)
               gRPC 127.0.0.1:{t_grpc}  inference.GRPCInferenceService
  predictor    REST http://127.0.0.1:{settings.predictor_http_port}/v2/models/{name}/infer
               gRPC 127.0.0.1:{settings.predictor_grpc_port}
  explainer    {explainer}
  metrics      http://127.0.0.1:{t_http}/metrics  http://127.0.0.1:{settings.predictor_http_port}/metrics
  payload log  {settings.log_sink_url or "off"}

REST:
  curl -s -H 'content-type: application/json' \\
    http://127.0.0.1:{t_http}/v1/models/{name}:predict -d '{json.dumps(body)}'
gRPC (grpcurl; the servers have reflection, no proto file needed):
  grpcurl -plaintext 127.0.0.1:{t_grpc} describe inference.GRPCInferenceService
  grpcurl -plaintext -d '{{"model_name": "{name}", "inputs": [
    {{"name": "user_id", "datatype": "BYTES", "shape": [1], "contents":
      {{"bytes_contents": ["dTAwMDAwMQ=="]}}}},
    ... one input per request field ...]}}' 127.0.0.1:{t_grpc} inference.GRPCInferenceService/ModelInfer
Python:
  import httpx
  httpx.post("http://127.0.0.1:{t_http}/v1/models/{name}:predict", json={body!r}).json()
"""


def run(settings: LocalStackSettings) -> None:
    """Start, print, wait; always stops the children."""
    common = ["--model-name", settings.model_name]
    predictor = _start(
        "relearn.serving.predictor",
        [
            "--http-port",
            str(settings.predictor_http_port),
            "--grpc-port",
            str(settings.predictor_grpc_port),
            "--model-uri",
            settings.model_uri,
            "--log-sink-url",
            settings.log_sink_url,
            *common,
        ],
    )
    transformer = _start(
        "relearn.serving.transformer",
        [
            "--http-port",
            str(settings.transformer_http_port),
            "--grpc-port",
            str(settings.transformer_grpc_port),
            "--predictor-host",
            f"127.0.0.1:{settings.predictor_grpc_port}",
            *common,
        ],
    )
    children = [predictor, transformer]
    if settings.explainer_http_port:  # KServe's :explain verb, with its own copy of the champion
        ports = [
            "--http-port",
            str(settings.explainer_http_port),
            "--grpc-port",
            str(settings.explainer_grpc_port),
        ]
        explainer = ["--host", "127.0.0.1", *ports, "--model-uri", settings.model_uri, *common]
        children.append(_start("relearn.serving.explainer", explainer))
    # Ctrl-C and SIGTERM both end the stack, also when SIGINT came in ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        deadline = time.monotonic() + settings.ready_timeout_seconds
        _wait_ready(f"http://127.0.0.1:{settings.predictor_http_port}", predictor, deadline)
        _wait_ready(f"http://127.0.0.1:{settings.transformer_http_port}", transformer, deadline)
        if settings.explainer_http_port:
            _wait_ready(f"http://127.0.0.1:{settings.explainer_http_port}", children[2], deadline)
        print(usage(settings), flush=True)
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m relearn.serving.local``."""
    configure_logging()
    CliApp.run(LocalStackSettings, cli_args=argv)


if __name__ == "__main__":
    main()
