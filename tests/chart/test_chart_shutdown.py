"""A server's shutdown fits its pod's termination grace period: the listeners' grace (fraud.graceSeconds)
reaches every server's settings, the predictor's payload-log drain comes on top, and a sum that does not fit
the period (the component's timeout: Knative's rule, which the chart applies to RawDeployment pods too) is
refused at render time instead of being cut short by a kill."""

from __future__ import annotations

import pytest

from support.chart import CHART, HELM, _run, needs_helm, objects, rendered

COMPONENTS = ("predictor", "transformer", "explainer")


@needs_helm
def test_grace_reaches_every_server_and_raw_pods_get_the_timeout_as_their_grace_period(monkeypatch) -> None:
    from relearn.serving.config import PredictorSettings, TransformerSettings
    from relearn.serving.explainer import ExplainerSettings

    settings = {
        "predictor": PredictorSettings,
        "transformer": TransformerSettings,
        "explainer": ExplainerSettings,
    }
    docs = rendered("production", "--set", "fraud.graceSeconds=7")
    modes = set()
    for isvc in objects(docs, "InferenceService"):
        raw = isvc["metadata"]["annotations"].get("serving.kserve.io/deploymentMode") == "RawDeployment"
        modes.add(raw)
        for comp in (c for c in COMPONENTS if c in isvc["spec"]):
            spec = isvc["spec"][comp]
            for e in spec["containers"][0]["env"]:
                if "value" in e:
                    monkeypatch.setenv(e["name"], e["value"])
            assert settings[comp]().grace_seconds == 7, comp
            # Knative's webhook refuses the field (it derives it from the timeout); raw pods need it set.
            assert spec.get("terminationGracePeriodSeconds") == (spec["timeout"] if raw else None), comp
    assert modes == {True, False}  # both modes were looked at


@needs_helm
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["fraud.graceSeconds=21"],  # 21 + the 10 s drain > 30
            "fraud.graceSeconds (21) + fraud.logger.drainSeconds (10) must be below "
            "fraud.predictor.timeout (30)",
        ),
        (
            ["fraud.transformer.timeout=5"],  # no drain: the transformer does not log
            "fraud.graceSeconds (5) + fraud.logger.drainSeconds (0) must be below "
            "fraud.transformer.timeout (5)",
        ),
    ],
)
def test_a_shutdown_longer_than_the_grace_period_is_refused(sets: list[str], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    out = _run([HELM, "template", "relearn", str(CHART), *args])
    assert out.returncode != 0 and message in out.stderr, out.stderr[-500:]
    # Without the drain (logging off) the same grace fits the predictor.
    if sets == ["fraud.graceSeconds=21"]:
        ok = _run([HELM, "template", "relearn", str(CHART), *args, "--set", "fraud.logger.enabled=false"])
        assert ok.returncode == 0, ok.stderr[-500:]
