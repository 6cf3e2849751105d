"""Documented commands that failed as written (issue 17): each test runs the command the README gives.

The slow ones share the session's small pipeline run (``trained``, the state ``make train`` leaves behind).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from support.serving_stack import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
DRIFT_PYTHON = ROOT / ".venv" / "drift" / "bin" / "python"


def _documentation() -> str:
    """README.md and the docs site's pages (docs/), where the README's guides moved (issue 23)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


def _clean_env() -> dict[str, str]:
    """A new user's shell: no relearn or MLflow settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RELEARN_", "MLFLOW_"))}


@pytest.mark.slow
def test_make_drift_is_ready_with_defaults_after_make_train(trained, tmp_path: Path) -> None:
    """``make drift`` after ``make train``: the detector finds the champion's reference under ``.relearn/``.

    Before, its default was MLflow's ``./mlflow.db``, which the drift environment's mlflow-skinny cannot
    read anyway: ``/ready`` stayed 503 for ever.
    """
    if not DRIFT_PYTHON.exists():
        pytest.skip("drift environment missing: make setup")
    assert trained["summary"]["drift_reference"] == str(trained["home"] / "drift" / "reference.parquet")
    (tmp_path / ".relearn").symlink_to(trained["home"])  # the clone's .relearn/ after `make train`
    port, log_path = free_port(), tmp_path / "drift.log"
    cmd = [str(DRIFT_PYTHON), "-m", "relearn.monitoring.server", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, cwd=tmp_path, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            "make drift",
            lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200,
            process,
            log_path,
            timeout=180,
            errors=(httpx.HTTPError,),
        )
        assert httpx.get(f"{url}/ready").json() == {"ready": True, "reference": "file"}
    finally:
        stop_process(process)


def test_the_detector_defaults_to_the_reference_make_train_exports(monkeypatch, tmp_path: Path) -> None:
    """No reference path and no MLflow server: the file under RELEARN_HOME, not MLflow's ./mlflow.db."""
    from relearn.monitoring.settings import DriftSettings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path))
    assert DriftSettings().reference_file() == tmp_path.resolve() / "drift" / "reference.parquet"
    assert DriftSettings(mlflow_tracking_uri="http://mlflow:5000").reference_file() is None
    assert DriftSettings(reference_path=tmp_path / "r.parquet").reference_file() == tmp_path / "r.parquet"


def test_make_serve_logs_to_make_drift_with_defaults() -> None:
    """``make serve`` and ``make drift`` side by side: no shared port; the payload log reaches it."""
    from relearn.monitoring.settings import DriftSettings
    from relearn.serving.local import LocalStackSettings

    serve, drift = LocalStackSettings(), DriftSettings()
    ports = [
        serve.transformer_http_port,
        serve.transformer_grpc_port,
        serve.predictor_http_port,
        serve.predictor_grpc_port,
        serve.explainer_http_port,
        serve.explainer_grpc_port,
    ]
    router = {8084, 8085}  # the local rollout router's defaults (python -m relearn.rollout.router --help)
    assert drift.port not in ports and len(set(ports)) == 6 and not router & set(ports)
    assert serve.log_sink_url == f"http://{drift.host}:{drift.port}/"


def test_readme_says_where_its_python_commands_run() -> None:
    """Bare ``python -m relearn…`` failed in a new shell: the README names the environments, once."""
    import importlib.util
    import re

    readme = (ROOT / "README.md").read_text()
    for where in ("source .venv/platform/bin/activate", ".venv/drift", '"$PWD/.venv/tools/bin:$PATH"'):
        assert where in readme
    modules = set(re.findall(r"python -m ([\w.]+)", _documentation()))
    assert "relearn.monitoring.server" in modules
    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []


def test_a_lake_from_the_generators_defaults_passes_make_trains_ingest_and_validation(tmp_path: Path) -> None:
    """``python -m relearn.data`` then ``make train ARGS="--source .relearn/data"``: the same window.

    Before, the generator started on 2024-01-01 for 28 days and the pipeline read 35 days from 2026-01-01:
    no events.
    """
    from pipelines.train import train_pipeline
    from relearn.data.__main__ import GenerateSettings, run
    from relearn.steps import IngestParams, ingest, validate

    lake = tmp_path / "lake"
    run(GenerateSettings(out=lake, users=300, merchants=60, progress=False))
    defaults = {name: spec.default for name, spec in train_pipeline.component_spec.inputs.items()}
    start, days = defaults["start"], defaults["days"]
    params = IngestParams(start=start, days=days, source=str(lake))
    summary = ingest(params, str(tmp_path / "tx"), str(tmp_path / "labels"))
    assert summary["rows"] > 0 and summary["labels"] > 0
    assert validate(str(tmp_path / "tx"), str(tmp_path / "report.md"), start=start, days=days) == {"ok": True}


def test_batch_scoring_of_an_empty_selection_fails_and_says_why(tmp_path: Path) -> None:
    """``--source <lake>/transactions`` used to score 0 rows and exit 0; now it names the lake's root."""
    from relearn.data.__main__ import GenerateSettings
    from relearn.data.__main__ import run as generate
    from relearn.serving.batch import BatchSettings, run

    lake = tmp_path / "lake"
    generate(GenerateSettings(out=lake, days=2, users=50, merchants=20, progress=False))
    out = tmp_path / "scores.parquet"
    with pytest.raises(SystemExit, match="--source is the lake's root"):
        run(BatchSettings(source=lake / "transactions", output=out, progress=False))
    with pytest.raises(SystemExit, match=r"no transactions to score in .*lake/transactions in \[2030"):
        run(BatchSettings(source=lake, start="2030-01-01", end="2030-01-02", output=out, progress=False))
    assert not out.exists()


def test_make_train_keeps_its_runs_under_relearn_home(monkeypatch, tmp_path: Path) -> None:
    """RELEARN_HOME moves every piece of local state, the pipeline runs' task outputs included."""
    from pydantic_settings import CliApp

    import pipelines.run as runner

    calls = []
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(runner, "run_locally", lambda *args: calls.append(args) or {})
    monkeypatch.setattr(runner, "print_summary", lambda summary: None)
    CliApp.run(runner.RunnerSettings, cli_args=[])
    ((_, pipeline_root, home, _),) = calls
    assert (pipeline_root, home) == (tmp_path / "home" / "pipeline_runs", tmp_path / "home")


@pytest.mark.slow
def test_a_local_pipeline_run_leaves_no_temporary_folders(settings, monkeypatch, tmp_path: Path) -> None:
    """kfp.local's ``mktemp -d`` per task used to stay behind in the temp dir after every run."""
    from pipelines.run import LocalRunError, run_locally

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # what the tasks would use; this process's tempfile is set already
    params = {"start": "2026-01-01", "days": 3, "source": str(tmp_path / "empty-lake"), "git_sha": "t"}
    with pytest.raises(LocalRunError, match="validation"):  # ingest and validate ran, as processes
        run_locally(params, tmp_path / "runs", settings.home)
    assert list(tmp.iterdir()) == []
    assert os.environ["TMPDIR"] == str(tmp)


def test_the_readme_documents_a_labels_body_the_detector_accepts() -> None:
    """``POST /labels`` had no documented body: the README's example parses as the detector parses it."""
    import json
    import re

    from relearn.monitoring.labels import parse_labels

    (body,) = re.findall(r"curl -s \S+:8090/labels .*?-d '(.*?)'", _documentation(), re.S)
    ((transaction_id, is_fraud, _),) = parse_labels(json.loads(body))
    assert (transaction_id, is_fraud) == ("tx-demo-1", 1)


@pytest.mark.slow
def test_grpcurl_needs_no_proto_file_the_servers_have_reflection(trained, tmp_path: Path) -> None:
    """``make serve``'s grpcurl example named a proto file nobody had: a client as generic as grpcurl lists
    the service, reads its messages and calls it in JSON through server reflection alone."""
    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from support.serving_stack import Server

    env = {"RELEARN_HOME": str(trained["home"])}
    server = Server("relearn.serving.predictor", [], env, tmp_path / "predictor.log").start()
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.grpc_target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            assert "inference.GRPCInferenceService" in database.get_services()
            pool = descriptor_pool.DescriptorPool(database)  # no generated code: only what reflection says
            service = pool.FindServiceByName("inference.GRPCInferenceService")
            method = service.FindMethodByName("ModelMetadata")
            request_type = message_factory.GetMessageClass(method.input_type)
            response_type = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelMetadata",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            reply = call(json_format.Parse('{"name": "relearn-fraud"}', request_type()), timeout=10)
        metadata = json_format.MessageToDict(reply)
        assert metadata["name"] == "relearn-fraud" and metadata["inputs"]
    finally:
        server.stop()


def test_missing_crds_skip_with_the_reason_in_a_clone_and_fail_in_ci(tmp_path: Path) -> None:
    """``make chart-test`` skipped the CRD tests silently without ../shared/crds, CI included."""
    import sys

    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/rollout/test_rollout_backend.py"]
    cmd += ["-k", "satisfies_protocol"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["RELEARN_TEST_CRDS_DIR"] = str(tmp_path / "absent")
    clone = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert clone.returncode == 0, clone.stdout
    assert f"1 test(s) skipped: {tmp_path / 'absent'} is missing" in clone.stdout
    ci = subprocess.run(cmd, cwd=ROOT, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=120)
    assert ci.returncode == 1, ci.stdout
    assert f"CI=true: {tmp_path / 'absent'} is missing" in ci.stdout


def test_one_alert_budget_for_pipeline_detector_and_demo() -> None:
    """The pipeline evaluated at 0.5 % while the detector and the demo measured at 1 %."""
    import inspect

    from pipelines.train import train_pipeline
    from relearn.demo.settings import DemoSettings
    from relearn.model.evaluate import evaluate
    from relearn.monitoring.settings import DriftSettings
    from relearn.settings import ALERT_BUDGET

    assert {
        train_pipeline.component_spec.inputs["alert_budget"].default,
        inspect.signature(evaluate).parameters["alert_budget"].default,
        DriftSettings().alert_budget,
        DemoSettings.model_fields["alert_budget"].default,
    } == {ALERT_BUDGET}
