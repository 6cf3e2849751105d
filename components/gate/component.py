"""gate: better than the champion (a fine-tuned one: not worse), no slice or behavioral test failing."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Output

from components import relearn_component


@relearn_component
def gate(
    evaluation: Input[Artifact],
    model_version: str,
    min_improvement: float,
    max_slice_regression: float,
    max_behavioral_failure_rate: float,
    warm_min_improvement: float,
    decision: Output[Markdown],
) -> NamedTuple("GateOutputs", [("passed", bool), ("reason", str)]):
    """Writes the decision as Markdown and returns it, for the deploy step to act on."""
    from collections import namedtuple

    from relearn import steps
    from relearn.evaluation import gate as gate_step

    passed, reason = steps.run_step(
        gate_step,
        evaluation.path,
        decision.path,
        model_version=model_version,
        min_improvement=min_improvement,
        max_slice_regression=max_slice_regression,
        max_behavioral_failure_rate=max_behavioral_failure_rate,
        warm_min_improvement=warm_min_improvement,
    )
    return namedtuple("GateOutputs", ["passed", "reason"])(passed, reason)
