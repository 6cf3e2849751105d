"""The post-install checks (``python -m relearn.checks``, the chart's helm test hooks) against real servers.

Real servers on loopback: two MLflow servers (one with MLflow's default allowed hosts, which refuses the
in-cluster Service FQDN, one started with the ``--allowed-hosts`` the chart renders), drift detectors from
the drift environment (one without a champion to load, one on the trained champion), and the real
transformer and predictor on a champion registered by one small pipeline run. The checks run as the hook
Pods run them: a subprocess whose JSON lines and exit code are read. The chart tests render the hook Pods
and check them against the chart's own URLs and NetworkPolicies.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from relearn import checks
from relearn.data.schema import REQUEST_FIELDS
from support.serving_stack import Server, free_port, stop_process, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "relearn"
HELM = ROOT / ".venv" / "tools" / "bin" / "helm"
DRIFT_PYTHON = ROOT / ".venv" / "drift" / "bin" / "python"
MLFLOW = Path(sys.executable).with_name("mlflow")
MODEL = "relearn-fraud"
# The Host every in-cluster client sends to the chart's MLflow (relearn.mlflow.uri): Service FQDN and port.
IN_CLUSTER_HOST = "relearn-mlflow.relearn.svc.cluster.local:5000"
needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm missing: run make setup")
needs_drift = pytest.mark.skipif(
    not DRIFT_PYTHON.exists(), reason="drift environment missing: run make setup"
)


def run_checks(*args: str, deadline: float = 20, interval: float = 0.5) -> tuple[int, dict[str, dict], str]:
    """``python -m relearn.checks`` as the hook Pod runs it: (exit code, result line by check, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(checks.ENV_PREFIX)}
    cmd = [sys.executable, "-m", "relearn.checks", f"--deadline-seconds={deadline}"]
    cmd += [f"--interval-seconds={interval}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline + 60, env=env, check=False)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines and lines[-1].get("summary"), done.stdout + done.stderr
    return done.returncode, {line["check"]: line for line in lines[:-1]}, done.stderr


# ------------------------------------------------------------------------------------------ servers
@contextmanager
def mlflow_server(directory: Path, backend: str, *extra: str) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (a free port) with ``extra`` options; yields its URL."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"mlflow-{port}.log"
    cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", backend, *extra]
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            "mlflow",
            lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
            process,
            log_path,
            120,
            errors=(httpx.HTTPError,),
        )
        yield url
    finally:
        stop_process(process)


@contextmanager
def drift_detector(directory: Path, mlflow_url: str, alive: bool = False) -> Iterator[str]:
    """The drift detector (its own environment) on the champion of ``mlflow_url``; yields its URL at once,
    or once ``/healthz`` answers (``alive``)."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RELEARN_DRIFT_HOST": "127.0.0.1",
        "RELEARN_DRIFT_PORT": str(port),
        "RELEARN_DRIFT_DATA_DIR": str(directory / "data"),
        "RELEARN_DRIFT_MLFLOW_TRACKING_URI": mlflow_url,
        "RELEARN_DRIFT_MODEL_NAME": MODEL,
        "RELEARN_DRIFT_REPORTS": "false",
        "RELEARN_DRIFT_LOG_LEVEL": "WARNING",
    }
    with (directory / "detector.log").open("w") as log:
        process = subprocess.Popen(
            [str(DRIFT_PYTHON), "-m", "relearn.monitoring.server"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"  # the chart's relearn.drift.url ends with a slash too
    try:
        if alive:
            healthy = lambda: httpx.get(f"{url}healthz", timeout=2).status_code == 200  # noqa: E731
            wait_until(
                "drift detector", healthy, process, directory / "detector.log", 180, (httpx.HTTPError,)
            )
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def serving(trained) -> Iterator[dict[str, Server]]:
    """The real predictor and transformer on the champion, and a transformer whose predictor is down."""
    root, env = trained["root"], {"RELEARN_HOME": str(trained["home"])}
    predictor = Server("relearn.serving.predictor", [], env, root / "predictor.log")
    transformer = Server(
        "relearn.serving.transformer",
        ["--predictor-host", predictor.grpc_target],
        env,
        root / "transformer.log",
    )
    orphan = Server(
        "relearn.serving.transformer",
        ["--predictor-host", f"127.0.0.1:{free_port()}", "--predictor-timeout-seconds", "0.5"],
        env,
        root / "transformer-orphan.log",
    )
    servers = [predictor, transformer, orphan]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield {"predictor": predictor, "transformer": transformer, "orphan": orphan}
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def mlflow_default(tmp_path_factory) -> Iterator[str]:
    """MLflow with its default allowed hosts (localhost and private IPs), as the chart ran it before."""
    directory = tmp_path_factory.mktemp("mlflow-default")
    with mlflow_server(directory, f"sqlite:///{directory / 'mlflow.db'}") as url:
        yield url


@pytest.fixture(scope="module")
def mlflow_allowing(trained) -> Iterator[str]:
    """MLflow on the trained registry, started with the --allowed-hosts the chart renders for its server."""
    if not HELM.exists():
        pytest.skip("helm missing: run make setup")
    (container,) = one(render(), "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"]
    (allowed,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--allowed-hosts=")]
    with mlflow_server(
        trained["root"] / "mlflow", trained["tracking_uri"], "--allowed-hosts", allowed
    ) as url:
        yield url


# ------------------------------------------------------------------------------------------ the module
def test_help_lists_every_check_and_usage_errors_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "relearn.checks", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    for name in checks.CHECKS:
        assert f"  {name} " in done.stdout, name
    for args in ([], ["predict"], ["--mlflow-url=http://x", "no-such-check"]):
        done = subprocess.run(
            [sys.executable, "-m", "relearn.checks", *args],
            capture_output=True,
            text=True,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith(checks.ENV_PREFIX)},
        )
        assert done.returncode == 2, (args, done.stdout, done.stderr)


def test_the_module_imports_nothing_but_the_standard_library():
    """It runs in any relearn image (the hooks use the rollout image): no third-party import."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import relearn.checks\n"
        "names = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(n for n in names if n not in sys.stdlib_module_names and n != 'relearn'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_example_is_a_whole_transaction():
    transaction = checks.example_transaction()
    assert tuple(transaction) == REQUEST_FIELDS
    assert transaction["transaction_id"] != checks.example_transaction()["transaction_id"]
    assert datetime.fromisoformat(transaction["event_timestamp"]) > datetime.now(UTC) - timedelta(minutes=1)


# ------------------------------------------------------------------------------------------ MLflow
def test_mlflow_api_fails_on_a_host_mlflow_does_not_allow_while_health_passes(mlflow_default):
    """The defect the check exists for: /health is 200, the API is 403 for the Service FQDN."""
    code, results, _ = run_checks(
        f"--mlflow-url={mlflow_default}", f"--host-header={IN_CLUSTER_HOST}", "mlflow-health", "mlflow-api"
    )
    assert code == 1
    assert results["mlflow-health"]["ok"] and results["mlflow-health"]["status"] == 200
    api = results["mlflow-api"]
    assert not api["ok"] and api["status"] == 403, api
    assert api["attempts"] == 1, api  # a 403 is final: no waiting for the deadline
    assert "--allowed-hosts" in api["hint"] and IN_CLUSTER_HOST in api["hint"]
    # The same server answers a Host it allows (127.0.0.1:<port>, the URL's own): it is the Host, not the API.
    code, results, _ = run_checks(f"--mlflow-url={mlflow_default}", "mlflow-api")
    assert code == 0 and results["mlflow-api"]["ok"], results


def test_mlflow_api_passes_with_the_charts_allowed_hosts(mlflow_allowing):
    code, results, _ = run_checks(f"--mlflow-url={mlflow_allowing}", f"--host-header={IN_CLUSTER_HOST}")
    assert code == 0, results
    assert set(results) == {"mlflow-health", "mlflow-api"}  # every check whose URL is set
    assert results["mlflow-api"]["experiments"] == 1  # the pipeline's experiment (max_results=1)
    assert IN_CLUSTER_HOST in results["mlflow-api"]["detail"]


# ------------------------------------------------------------------------------------------ drift detector
@needs_drift
def test_drift_ready_fails_at_the_deadline_without_a_champion(tmp_path, mlflow_default):
    with drift_detector(tmp_path, mlflow_default, alive=True) as url:
        code, results, stderr = run_checks(f"--drift-url={url}", "drift-health", "drift-ready", deadline=5)
    assert code == 1
    assert results["drift-health"]["ok"], results
    ready = results["drift-ready"]
    assert not ready["ok"] and ready["status"] == 503 and ready["attempts"] > 1, ready  # retried, then failed
    assert "deadline" in ready["detail"] and "champion" in ready["hint"]
    assert "drift-ready: not yet" in stderr


@needs_drift
def test_drift_checks_wait_for_the_detector_to_load_the_champion(tmp_path, trained, mlflow_allowing):
    with drift_detector(tmp_path, mlflow_allowing) as url:  # the checks start while the detector starts
        code, results, _ = run_checks(f"--drift-url={url}", deadline=240)
    assert code == 0, results
    assert results["drift-health"]["attempts"] > 1  # connection refused while it imported: retried
    assert results["drift-ready"]["ok"] and results["drift-ready"]["status"] == 200


# ------------------------------------------------------------------------------------------ serving
def test_predict_through_the_real_transformer_and_predictor(serving, trained):
    url = serving["transformer"].url
    code, results, _ = run_checks(f"--transformer-url={url}", f"--model-name={MODEL}")
    assert code == 0, results
    assert set(results) == {"transformer-ready", "predict"}
    predict = results["predict"]
    assert 0.0 <= predict["score"] <= 1.0 and isinstance(predict["decision"], bool)
    assert predict["model_version"] == trained["summary"]["model_version"]
    assert predict["detail"].startswith("scored relearn-check-")


def test_predict_fails_when_the_transformer_cannot_reach_its_predictor(serving):
    """Readiness alone passes: the transformer is up, but every prediction is a 503 (retried, then fails)."""
    code, results, _ = run_checks(f"--transformer-url={serving['orphan'].url}", deadline=6)
    assert code == 1
    assert results["transformer-ready"]["ok"], results
    predict = results["predict"]
    assert not predict["ok"] and predict["status"] == 503 and predict["attempts"] > 1, predict
    assert "predictor" in predict["hint"]


def test_predict_fails_on_a_server_that_does_not_take_transactions(serving):
    """The predictor speaks the same protocol but wants model inputs: a 400, final at once."""
    code, results, _ = run_checks(f"--transformer-url={serving['predictor'].url}", "predict")
    assert code == 1
    assert results["predict"]["status"] == 400 and results["predict"]["attempts"] == 1, results


def test_checks_retry_until_the_deadline_when_nothing_listens():
    code, results, _ = run_checks(f"--transformer-url=http://127.0.0.1:{free_port()}", deadline=2)
    assert code == 1
    for result in results.values():
        assert not result["ok"] and result["status"] is None and "deadline" in result["detail"], result
    assert results["transformer-ready"]["attempts"] > 1


def test_prediction_validation_rejects_broken_answers(serving, trained):
    """A real answer of the transformer passes; each defect in it fails the check."""
    transaction = checks.example_transaction()
    response = httpx.post(
        f"{serving['transformer'].url}/v1/models/{MODEL}:predict",
        json={"instances": [transaction]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    real, tid = response.json(), transaction["transaction_id"]
    assert (
        checks.validate_prediction(response.content, tid)["model_version"]
        == trained["summary"]["model_version"]
    )

    def broken(change) -> bytes:
        answer = json.loads(json.dumps(real))
        change(answer)
        return json.dumps(answer).encode()

    row = lambda answer: answer["predictions"][0]  # noqa: E731
    cases = {
        "score above 1": broken(lambda a: row(a).update(score=1.5)),
        "negative score": broken(lambda a: row(a).update(score=-0.1)),
        "NaN score": broken(lambda a: row(a).update(score=math.nan)),
        "score as text": broken(lambda a: row(a).update(score=str(row(a)["score"]))),
        "no score": broken(lambda a: row(a).pop("score")),
        "decision as a number": broken(lambda a: row(a).update(decision=1)),
        "no decision": broken(lambda a: row(a).pop("decision")),
        "another transaction": broken(lambda a: row(a).update(transaction_id="t-other")),
        "no model version": broken(lambda a: a.pop("model_version")),
        "unknown model version": broken(lambda a: a.update(model_version="unknown")),
        "two predictions": broken(lambda a: a["predictions"].append(row(a))),
        "no predictions": broken(lambda a: a.update(predictions=[])),
        "v2 answer": json.dumps({"model_name": MODEL, "outputs": []}).encode(),
        "not JSON": b"<html>gateway</html>",
    }
    for case, body in cases.items():
        try:
            checks.validate_prediction(body, tid)
        except checks.CheckFailed:
            continue
        pytest.fail(f"accepted an answer with {case}")


# ------------------------------------------------------------------------------------------ chart hooks
def render(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(HELM), "template", "relearn", str(CHART), "-n", "relearn", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def hook_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["relearn.io/check"]: d for d in docs if d["kind"] == "Pod"}


def one(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return doc


@needs_helm
def test_hook_pods_run_the_checks_against_the_charts_own_urls():
    docs = render("--set", "driftDetector.ingest.enabled=true")  # off by default; on, one check more
    pods = hook_pods(docs)
    assert set(pods) == {"mlflow", "drift", "serving"}
    settings = one(docs, "ConfigMap", "-settings")["data"]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    predictor_env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rollout = one(docs, "Deployment", "-rollout")["spec"]["template"]["spec"]["containers"][0]
    asked: dict[str, list[str]] = {}
    for name, pod in pods.items():
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["annotations"]["helm.sh/hook"] == "test"
        assert meta["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert meta["annotations"]["helm.sh/hook-output-log-policy"] == "hook-failed"  # the JSON lines
        assert meta["annotations"]["sidecar.istio.io/inject"] == "false"  # a sidecar never exits
        assert meta["labels"]["app.kubernetes.io/component"] == "helm-test"
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
        (container,) = spec["containers"]
        assert container["image"] == rollout["image"]
        assert container["command"] == ["python", "-m", "relearn.checks"]
        assert "envFrom" not in container  # self-contained: command, args and literal env only
        assert all("value" in e for e in container.get("env", []))
        options = checks.parser().parse_args(container["args"])
        assert options.checks and set(options.checks) <= set(checks.CHECKS), name
        assert options.deadline_seconds == values["tests"]["deadlineSeconds"] and not options.host_header
        asked[name] = options.checks
        if name == "mlflow":
            assert options.mlflow_url == settings["RELEARN_MLFLOW_TRACKING_URI"]
            assert checks._url_host(options.mlflow_url) == IN_CLUSTER_HOST
        if name == "drift":  # the logger posts to the replicas; the monitor keeps the detector's Service
            assert options.drift_ingest_url == predictor_env["RELEARN_PREDICTOR_LOG_SINK_URL"]
            assert options.drift_url == predictor_env["RELEARN_PREDICTOR_LOG_SINK_URL"].replace(
                "-ingest", "-detector"
            )
        if name == "serving":
            # KServe's cluster-local name of the transformer component (constants.TransformerServiceName,
            # port 80), in Serverless and RawDeployment mode alike; the model name of the v1 URL.
            assert (
                options.transformer_url
                == f"http://{isvc['metadata']['name']}-transformer.relearn.svc.cluster.local"
            )
            assert options.model_name == values["fraud"]["modelName"] == "relearn-fraud"
    assert sorted(c for names in asked.values() for c in names) == sorted(checks.CHECKS)  # every check is run

    drift = hook_pods(render())["drift"]["spec"]["containers"][0]["args"]
    assert "drift-ingest-ready" not in drift and not any(a.startswith("--drift-ingest-url") for a in drift)
    assert not hook_pods(render("--set", "tests.enabled=false"))
    assert set(hook_pods(render("--set", "fraud.exposedProtocol=h2c"))) == {"mlflow", "drift"}  # gRPC only
    assert set(hook_pods(render("--set", "driftDetector.enabled=false"))) == {"mlflow", "serving"}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to ``labels``."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def admitted(policies: list[dict[str, Any]], target: dict[str, str], source: dict[str, str]) -> bool:
    """Whether a pod labelled ``source`` may connect to a pod labelled ``target`` (same namespace)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", [{}]):
                if "namespaceSelector" not in peer and _selects(peer.get("podSelector", {}), source):
                    return True
    return False


PRODUCTION = ["-f", str(CHART / "ci" / "production-values.yaml")]


@needs_helm
@pytest.mark.parametrize("values", [[], PRODUCTION, [*PRODUCTION, "--set", "fraud.exposedProtocol=http1"]])
def test_network_policies_let_the_hook_pods_reach_what_they_check(values):
    docs = render(*values)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    pods = hook_pods(docs)
    template = lambda suffix: one(docs, "Deployment", suffix)["spec"]["template"]["metadata"]["labels"]  # noqa: E731
    isvc = next(
        d for d in docs if d["kind"] == "InferenceService" and d["metadata"]["name"] == "relearn-fraud"
    )
    targets = {
        "mlflow": template("-mlflow"),
        "drift": template("-drift-detector"),
        "serving": {**isvc["metadata"]["labels"], **isvc["spec"]["transformer"]["labels"]},
    }
    assert {"mlflow", "drift"} <= set(pods)  # serving too, unless the transformer speaks gRPC only (h2c)
    for name, pod in pods.items():
        assert admitted(policies, targets[name], pod["metadata"]["labels"]), name
    # ... and the policies are not open to everyone: a pod of another release is refused by the serving pods.
    stranger = {**pods["mlflow"]["metadata"]["labels"], "app.kubernetes.io/instance": "other"}
    assert not admitted(policies, targets["serving"], stranger)
