"""The rollout controller's wiring in the chart: it reads the shadow comparison from the drift detector."""

from __future__ import annotations

from relearn.rollout.controller import ControllerSettings
from test_chart import needs_helm, objects, rendered

DETECTOR_URL = "http://relearn-drift-detector.relearn.svc.cluster.local:8090/"


def _controller_env(*extra: str) -> dict[str, str | None]:
    (deployment,) = [
        d for d in objects(rendered("shadow", *extra), "Deployment") if "rollout" in d["metadata"]["name"]
    ]
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@needs_helm
def test_controller_reads_the_shadow_comparison_from_the_detector_service(monkeypatch) -> None:
    env = _controller_env()
    assert env["RELEARN_ROLLOUT_DETECTOR_URL"] == DETECTOR_URL
    (service,) = [
        s for s in objects(rendered("shadow"), "Service") if s["metadata"]["name"] == "relearn-drift-detector"
    ]
    assert [p["port"] for p in service["spec"]["ports"]] == [8090]
    monkeypatch.setenv("RELEARN_ROLLOUT_DETECTOR_URL", env["RELEARN_ROLLOUT_DETECTOR_URL"])
    assert ControllerSettings().detector_url == DETECTOR_URL, "the variable is the controller's setting"


@needs_helm
def test_no_detector_no_detector_url() -> None:
    assert "RELEARN_ROLLOUT_DETECTOR_URL" not in _controller_env("--set", "driftDetector.enabled=false")
