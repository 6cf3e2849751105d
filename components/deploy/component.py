"""deploy: a challenger that passed the gate starts as shadow or canary (``rollout_mode``)."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components import relearn_component


@relearn_component
def deploy(
    model_version: str,
    gate_passed: bool,
    rollout_mode: str,
    percent: float,
    decision: Output[Markdown],
) -> NamedTuple("DeployOutputs", [("action", str), ("reason", str)]):
    """Starts the rollout through the backend of RELEARN_ROLLOUT_BACKEND; ``percent <= 0`` = default share."""
    from collections import namedtuple

    from relearn import steps
    from relearn.rollout.deploy import run_deploy

    action, reason = steps.run_step(
        run_deploy, model_version, gate_passed, rollout_mode, percent, decision.path
    )
    return namedtuple("DeployOutputs", ["action", "reason"])(action, reason)
