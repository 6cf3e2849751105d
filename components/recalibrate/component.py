"""recalibrate: the champion's weights with a threshold re-fitted on the detector's labelled traffic."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components import relearn_component


@relearn_component
def recalibrate(
    detector_url: str,
    maturity_seconds: float,
    alert_budget: float,
    min_rows: int,
    min_frauds: int,
    decision: Output[Markdown],
) -> NamedTuple("RecalibrateOutputs", [("model_version", str), ("passed", bool)]):
    """Registers the recalibrated champion (``passed``), or says why not in ``decision``."""
    from collections import namedtuple

    from relearn import steps
    from relearn.model.recalibrate import run_step

    version, passed = steps.run_step(
        run_step, detector_url, maturity_seconds, alert_budget, min_rows, min_frauds, decision.path
    )
    return namedtuple("RecalibrateOutputs", ["model_version", "passed"])(version, passed)
