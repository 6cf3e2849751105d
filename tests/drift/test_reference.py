"""The reference comes from the champion's stored sample in a real MLflow store, and follows the alias."""

from __future__ import annotations

import re
import time
import urllib.request

from conftest import Server, get_json, scenario_stream
from relearn.features.spec import MODEL_INPUTS

MODEL = "relearn-fraud"


def registered_versions(tracking_uri: str, tmp_path) -> list[str]:
    """Two versions of MODEL, each with a Parquet reference logged in its run (``reference_run_uri``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.create_registered_model(MODEL)
    reference, _, _ = scenario_stream("covariate_shift")
    versions = []
    for i, rows in enumerate((reference.iloc[:3000], reference.iloc[3000:6000])):
        path = tmp_path / f"reference-{i}" / "reference.parquet"
        path.parent.mkdir()
        rows[[*MODEL_INPUTS, "score"]].to_parquet(path, index=False)
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(path), artifact_path="reference")
        uri = f"runs:/{run.info.run_id}/reference/reference.parquet"
        version = client.create_model_version(
            MODEL,
            source=f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={"reference_run_uri": uri, "reference_uri": f"{run.info.artifact_uri}/reference"},
        )
        versions.append(str(version.version))
    client.set_registered_model_alias(MODEL, "champion", versions[0])
    return versions


def reference_version(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r"^relearn_drift_reference_version (\S+)$", text, re.M).group(1))


def champion_detector(tmp_path, monkeypatch, **options: str) -> tuple[Server, str, str, str]:
    """A detector on the champion of a registry holding v1 (champion) and v2: ``(server, uri, v1, v2)``.

    The drift image has mlflow-skinny (no SQLAlchemy): here a file store plays the tracking server; in a
    cluster the detector talks to the MLflow server over HTTP with the same client calls.
    """
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking_uri = (tmp_path / "mlruns").as_uri()
    v1, v2 = registered_versions(tracking_uri, tmp_path)
    options = {"mlflow_tracking_uri": tracking_uri, "model_name": MODEL, "reports": "false", **options}
    return Server(tmp_path / "data", None, **options), tracking_uri, v1, v2


def test_reference_loads_from_champion_and_reloads_when_alias_moves(tmp_path, monkeypatch):
    import mlflow

    srv, tracking_uri, v1, v2 = champion_detector(tmp_path, monkeypatch, reference_poll_s="0.5")
    try:
        srv.wait_ready()
        assert get_json(srv.url + "/ready")["reference"] == v1
        assert reference_version(srv.url) == float(v1)
        mlflow.MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(MODEL, "champion", v2)
        deadline = time.monotonic() + 30
        while reference_version(srv.url) != float(v2) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reference_version(srv.url) == float(v2)
        assert get_json(srv.url + "/ready")["reference"] == v2
    finally:
        srv.stop()
