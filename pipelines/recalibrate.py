"""The recalibration pipeline: recalibrate → deploy, the cluster's response to a prior (label) shift.

The drift detector starts it (KFP API) on an incident whose response is ``recalibrate``
(:mod:`relearn.monitoring.response`): the champion's weights, its threshold re-fitted to the alert budget on
the detector's newest labelled traffic (read over the detector's HTTP API, its log being on the detector's
own volume), registered as a new version that starts as a shadow or canary, like a retrained one.
"""

from kfp import dsl

from components.deploy.component import deploy
from components.recalibrate.component import recalibrate
from pipelines.train import with_cluster_env
from relearn.settings import ALERT_BUDGET

PIPELINE_NAME = "relearn-recalibrate"


@dsl.pipeline(name=PIPELINE_NAME, description="relearn: re-fit the champion's threshold after a prior shift.")
def recalibrate_pipeline(
    detector_url: str,
    maturity_seconds: float = 0.0,
    alert_budget: float = ALERT_BUDGET,
    min_rows: int = 1000,
    min_frauds: int = 10,
    rollout_mode: str = "shadow",
    rollout_percent: float = 0.0,
) -> str:
    """Registers the champion with a re-fitted threshold and starts it as a shadow (or canary).

    Args:
        detector_url: The drift detector's base URL (its labelled rows: GET /v1/backtest/...).
        maturity_seconds: Label maturity: rows younger than the newest label minus this are left out.
        alert_budget: Share of transactions the fraud team reviews; the threshold flags that share.
        min_rows: Fewest labelled rows to re-fit on (fewer: not recalibrated, the reason in the step).
        min_frauds: Fewest frauds among them.
        rollout_mode: What the recalibrated version starts as: "shadow", "canary" or "none".
        rollout_percent: Its share of the traffic (mirrored for a shadow); 0 for the default.
    """
    refit = recalibrate(
        detector_url=detector_url,
        maturity_seconds=maturity_seconds,
        alert_budget=alert_budget,
        min_rows=min_rows,
        min_frauds=min_frauds,
    )
    deployed = deploy(
        model_version=refit.outputs["model_version"],
        gate_passed=refit.outputs["passed"],
        rollout_mode=rollout_mode,
        percent=rollout_percent,
    )
    for task in (refit, deployed):
        with_cluster_env(task)
    return deployed.outputs["reason"]
