"""The features step's SparkApplication: rendered, validated against the upstream CRD, submitted, awaited.

No cluster: tests/support/kube_api.py plays the API server (it validates every created object against the
closed CRD schema) and a stand-in Spark Operator runs the rendered application as a real local Spark process:
``spark-submit`` (from pyspark) with the spec's sparkConf/hadoopConf, main file, arguments and the driver's
environment. It sets ``status.applicationState`` as the operator does: SUBMITTED, RUNNING, then COMPLETED
or FAILED with "driver container failed with ExitCode: N, Reason: Error".
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_spark_parity import DAYS, START, _lake, mismatches

from relearn import steps
from relearn.data import generator
from relearn.data.spark_session import spark_available
from relearn.features import spark_application as sa
from support.crds import CRDS, crd_errors
from support.kube_api import FakeApiServer

APPS = "/apis/sparkoperator.k8s.io/v1beta2/namespaces/kubeflow/sparkapplications"
DRIVER = Path(sa.__file__).with_name("spark_driver.py")
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"no CRDs in {CRDS}")


class SparkOperator:
    """Plays Kubeflow's Spark Operator: runs each created application's driver with spark-submit locally."""

    def __init__(self, api: FakeApiServer, root: Path, run: bool = True) -> None:
        self.api, self.root, self.run = api, root, run

    def _state(self, path: str, state: str, message: str = "") -> None:
        status = {"applicationState": {"state": state, **({"errorMessage": message} if message else {})}}
        self.api.objects[path] = {**self.api.objects[path], "status": status}

    def __call__(self, path: str, app: dict[str, Any]) -> None:
        self._state(path, "SUBMITTED")
        if self.run:
            threading.Thread(target=self._run, args=(path, app), daemon=True).start()

    def _run(self, path: str, app: dict[str, Any]) -> None:
        spec = app["spec"]
        submit = Path(sys.executable).with_name("spark-submit")
        if not submit.exists():  # pyspark's own script when the venv has no entry point for it
            import pyspark

            submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
        conf = [("spark.master", "local[2]"), ("spark.driver.memory", spec["driver"]["memory"])]
        conf += list(spec["sparkConf"].items())
        conf += [(f"spark.hadoop.{k}", v) for k, v in spec["hadoopConf"].items()]
        main = spec["mainApplicationFile"].removeprefix("local://")
        command = [
            str(submit),
            *(a for k, v in conf for a in ("--conf", f"{k}={v}")),
            main,
            *spec["arguments"],
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELEARN_")}
        env |= {e["name"]: e["value"] for e in spec["driver"]["env"]} | {"PYSPARK_PYTHON": sys.executable}
        self.log = self.root / "driver.log"  # what `kubectl logs <app>-driver` would show
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
            self._state(path, "RUNNING")
            code = process.wait()
        if code == 0:
            self._state(path, "COMPLETED")
        else:
            self._state(path, "FAILED", f"driver container failed with ExitCode: {code}, Reason: Error")


def _app(**overrides: Any) -> dict[str, Any]:
    settings = sa.SparkApplicationSettings(
        config_map="relearn-settings", s3_secret="relearn-lake", s3_endpoint="http://minio:9000", **overrides
    )
    args = ["--transactions", "s3a://lake/tx", "--labels", "s3a://lake/labels", "--training-set", "s3a://x/t"]
    return sa.render(
        "0123abcd", args, image="relearn-spark:0.1.0", settings=settings, env={"RELEARN_HOME": "/h"}
    )


@needs_crds
def test_rendered_application_validates_and_typos_fail() -> None:
    app = _app()
    assert crd_errors(app) == []
    spec = app["spec"]
    assert (spec["type"], spec["mode"], spec["restartPolicy"]) == ("Python", "cluster", {"type": "Never"})
    assert spec["mainApplicationFile"] == sa.DRIVER_FILE and spec["arguments"][:2] == [
        "--transactions",
        "s3a://lake/tx",
    ]
    for role in ("driver", "executor"):
        assert spec[role]["envFrom"] == [
            {"configMapRef": {"name": "relearn-settings"}},
            {"secretRef": {"name": "relearn-lake"}},  # the object store's keys: never in the spec itself
        ]
        assert spec[role]["env"] == [{"name": "RELEARN_HOME", "value": "/h"}]
    assert spec["hadoopConf"]["fs.s3a.endpoint"] == "http://minio:9000"
    assert (spec["executor"]["instances"], spec["executor"]["memory"]) == (2, "4g")
    assert app["metadata"]["name"] == "relearn-features-0123abcd"
    typo = _app()
    typo["spec"]["executor"]["instance"] = 3
    assert any("instance" in e for e in crd_errors(typo))
    typo = _app()
    typo["spec"]["restartPolicy"] = {"type": "Sometimes"}
    assert any("Sometimes" in e for e in crd_errors(typo))


def test_the_driver_refuses_a_task_without_its_outputs(capsys) -> None:
    """Exit 2 naming the missing flags, before Spark starts (the operator reports it as the app's failure)."""
    from relearn.features import spark_driver

    lake = ["--transactions", "s3a://lake/tx", "--start", "2024-03-01", "--days", "3"]
    for task, missing in (("features", "--labels --training-set --summary"), ("validate", "--report")):
        with pytest.raises(SystemExit) as refused:
            spark_driver.main(["--task", task, *lake])
        assert refused.value.code == 2 and f"--task {task} needs {missing}" in capsys.readouterr().err


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake API server with the stand-in operator, reached through a kubeconfig like kubectl would."""
    if not spark_available():
        pytest.skip("pyspark or Java missing: `make setup` installs both")
    api = FakeApiServer()
    api.on_create = SparkOperator(api, tmp_path / "driver")
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("RELEARN_SPARK_SUBMIT", "operator")
    monkeypatch.setenv("RELEARN_SPARK_APP_DRIVER_FILE", f"local://{DRIVER}")
    monkeypatch.setenv("RELEARN_SPARK_APP_DRIVER_MEMORY", "1g")
    monkeypatch.setenv("RELEARN_SPARK_APP_POLL_SECONDS", "0.2")
    with api:
        yield api


@needs_crds
def test_the_step_on_the_operator_equals_pandas(operator: FakeApiServer, tmp_path: Path, settings) -> None:
    config = generator.GeneratorConfig(start=START, days=DAYS, n_users=30, n_merchants=13, seed=5)
    data = generator.generate(config)
    root = _lake(tmp_path, data.transactions, data.labels, data.cardholders)
    kwargs = {"start": START.isoformat(), "days": DAYS, "label_maturity_days": 5, "settings": settings}
    summary = steps.build_features(
        str(root), str(root), str(tmp_path / "spark.parquet"), data_engine="spark", **kwargs
    )
    expected = steps.build_features(str(root), str(root), str(tmp_path / "pandas.parquet"), **kwargs)

    create, *polls = operator.requests
    assert create["method"] == "POST" and create["path"] == APPS
    assert operator.rejected == []  # validated against the closed CRD schema
    assert {r["method"] for r in polls} == {"GET"}
    assert {k: v for k, v in summary.items() if k != "engine"} == expected
    got, want = pd.read_parquet(tmp_path / "spark.parquet"), pd.read_parquet(tmp_path / "pandas.parquet")
    got["_pos"] = want["_pos"] = range(len(want))
    assert mismatches(want, got, ["_pos"]) == {}


@needs_crds
def test_a_bad_lake_fails_the_application_with_the_driver_report(
    operator: FakeApiServer, tmp_path: Path, settings
) -> None:
    config = generator.GeneratorConfig(start=START, days=DAYS, n_users=20, n_merchants=13, seed=2)
    data = generator.generate(config)
    stray = data.transactions.iloc[:2].assign(event_timestamp=pd.Timestamp("2031-01-01", tz="UTC"))
    root = _lake(tmp_path, pd.concat([data.transactions, stray], ignore_index=True), data.labels)
    with pytest.raises(steps.StepFailed) as failed:
        steps.build_features(
            str(root),
            str(root),
            str(tmp_path / "t.parquet"),
            start=START.isoformat(),
            days=DAYS,
            settings=settings,
            data_engine="spark",
        )
    message = str(failed.value)
    assert "FAILED: driver container failed with ExitCode: 1, Reason: Error" in message
    assert "kubectl logs -n kubeflow relearn-features-" in message
    log = operator.on_create.log.read_text()
    assert "2 transactions outside the window" in log and "at org.apache" not in log


@needs_crds
def test_an_application_past_its_timeout_is_deleted(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.on_create = SparkOperator(api, tmp_path, run=False)  # stays SUBMITTED
        settings = sa.SparkApplicationSettings(timeout_seconds=1, poll_seconds=0.1)
        with pytest.raises(sa.SparkEngineError, match="ran past 1 s: deleted"):
            sa.submit_and_wait(_app(), settings, api.api_client())
    assert api.requests[-1]["method"] == "DELETE"
    assert api.requests[-1]["path"] == f"{APPS}/relearn-features-0123abcd"
    assert api.objects == {}
