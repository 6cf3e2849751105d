"""Arms are MLflow model versions: checked in the registry at start, tagged with the result.

An arm is named by its version number, as ``kubectl relearn canary start 7`` names one; ``v7`` is read as
version 7 too. The registry is the one of :class:`relearn.settings.RelearnSettings` (RELEARN_HOME, or
RELEARN_MLFLOW_TRACKING_URI) and the registered model its ``model_name``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relearn.experiments.result import Result, mlflow_tags, tag_prefix
from relearn.experiments.routing import model_version

__all__ = ["arm_tags", "check_versions", "model_version", "stop_tags", "tag_arms"]


def check_versions(settings: Any, arms: Iterable[str]) -> None:
    """Refuse arms whose model version is not in the registry, naming them (nothing is changed).

    Raises:
        ValueError: one or more versions unknown (or the registered model itself missing).
    """
    from mlflow.exceptions import MlflowException

    from relearn.model.registry import get_version_tags

    unknown = []
    for arm in arms:
        try:
            get_version_tags(settings, model_version(arm))
        except MlflowException:
            unknown.append(arm)
    if unknown:
        raise ValueError(
            f"unknown model version(s) {unknown} of {settings.model_name!r} in the MLflow registry "
            f"{settings.tracking_uri()}"
        )


def arm_tags(results: Mapping[str, Result]) -> dict[str, dict[str, str]]:
    """Tags per arm from the comparisons against the control (``{treatment: Result}``).

    A treatment's version gets its comparison's tags. The control's version takes part in every
    comparison: with one it gets the same tags, with more each comparison's tags under its treatment's name.
    """
    out: dict[str, dict[str, str]] = {}
    for treatment, result in results.items():
        tags = mlflow_tags(result)
        out[treatment] = {**tags, f"{tag_prefix(result.experiment)}.role": "treatment"}
        control = out.setdefault(result.control, {f"{tag_prefix(result.experiment)}.role": "control"})
        if len(results) == 1:
            control.update(tags)
        else:
            prefix = tag_prefix(result.experiment)
            control.update({k.replace(prefix, f"{prefix}.{treatment}", 1): v for k, v in tags.items()})
    return out


def stop_tags(experiment: str, split: Iterable[str], control: str, reason: str) -> dict[str, dict[str, str]]:
    """Tags per arm for an experiment stopped by hand (no decision of the test)."""
    prefix = tag_prefix(experiment)
    return {
        arm: {
            f"{prefix}.decision": "stopped",
            f"{prefix}.reason": reason,
            f"{prefix}.role": "control" if arm == control else "treatment",
        }
        for arm in split
    }


def tag_arms(settings: Any, tags: Mapping[str, Mapping[str, str]]) -> None:
    """Set each arm's tags on its model version (``MlflowClient.set_model_version_tag``)."""
    from relearn.model.registry import tag_version

    for arm, arm_tags_ in tags.items():
        tag_version(settings, model_version(arm), arm_tags_)
