"""Retraining trigger: the KFP API in a cluster, the local pipeline as a subprocess otherwise.

KFP has no event triggers, so an incident calls ``kfp.Client().create_run_from_pipeline_package`` with the
compiled training pipeline (the drift image compiles it at build). kfp is imported lazily: only the cluster
mode needs it, and it is slow to import.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relearn.commands import cli_options

if TYPE_CHECKING:
    from relearn.monitoring.settings import DriftSettings

Action = Callable[[dict[str, Any]], Any]  # what an incident starts, given the incident

log = logging.getLogger(__name__)


def submit_kfp_run(
    host: str | None,
    package_path: str,
    arguments: dict[str, Any] | None = None,
    reason: str = "drift",
    action: str = "retrain",
) -> str:
    """Start a run of a compiled pipeline (training, or recalibration) through the KFP API (cluster mode).

    Returns:
        The run id.
    """
    import kfp  # lazily: only the cluster mode needs it

    run = kfp.Client(host=host).create_run_from_pipeline_package(
        package_path, arguments=arguments or {}, run_name=f"relearn-{action} ({reason})"
    )
    return str(run.run_id)


RECURRING_RUN = "relearn-retrain (schedule)"


def ensure_recurring_run(
    host: str | None, package_path: str, interval_s: int, name: str = RECURRING_RUN
) -> str:
    """Make sure one recurring run named ``name`` runs the compiled pipeline every ``interval_s`` (cluster).

    KFP's scheduler then starts the runs: ``max_concurrency=1`` (a run never overlaps the previous one) and
    ``no_catchup`` (after a pause, one run, not one per missed interval) are its de-duplication. An existing
    recurring run of that name with the same interval is kept (a restarted detector creates no second one);
    one with another interval is deleted and created again.

    Returns:
        The recurring run's id.
    """
    import kfp  # lazily: only the cluster mode needs it

    client = kfp.Client(host=host)
    experiment = client.create_experiment(name="Default")  # kfp returns the existing one by that name
    flt = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})
    listed = client.list_recurring_runs(experiment_id=experiment.experiment_id, filter=flt)
    for existing in listed.recurring_runs or []:
        periodic = existing.trigger.periodic_schedule if existing.trigger else None
        if periodic is not None and int(periodic.interval_second or 0) == interval_s:
            return str(existing.recurring_run_id)
        client.delete_recurring_run(existing.recurring_run_id)
    created = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=name,
        description="relearn: scheduled retraining (RELEARN_DRIFT_SCHEDULE_INTERVAL_S)",
        interval_second=interval_s,
        max_concurrency=1,
        no_catchup=True,
        pipeline_package_path=package_path,
    )
    log.info("KFP recurring run %s every %d s", created.recurring_run_id, interval_s)
    return str(created.recurring_run_id)


def run_local(command: str, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start the local training pipeline (default ``.venv/platform/bin/python -m pipelines.run``)."""
    argv = shlex.split(command) + list(extra_args or [])
    log.info("starting local retraining: %s", argv)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def retrain_arguments(data: dict[str, Any]) -> dict[str, Any]:
    """The training pipeline parameters an incident sets: its ``train_mode`` (covariate drift: auto)."""
    return {"train_mode": data["train_mode"]} if data.get("train_mode") else {}


def retrain_action(settings: DriftSettings) -> Action | None:
    """What a ``retrain`` incident starts: the local pipeline, a KFP run of the training pipeline, or none.

    The incident's pipeline parameters (:func:`retrain_arguments`) reach the local command as
    ``--kebab-name value`` options (``pipelines.run`` takes every pipeline parameter so) and the KFP run as
    its arguments.
    """
    if settings.trigger_mode == "local":
        return lambda data: run_local(settings.local_command, cli_options(**retrain_arguments(data)))
    if settings.trigger_mode == "cluster":
        return lambda data: submit_kfp_run(
            settings.kfp_host,
            settings.kfp_package,
            retrain_arguments(data),
            reason=str(data.get("kind", "drift")),
        )
    return None


def recalibrate_action(settings: DriftSettings) -> Action | None:
    """What a ``recalibrate`` incident (prior shift) starts; None: the incident is posted, nothing started.

    Local mode: ``recalibrate_command``. Cluster mode: a KFP run of the compiled recalibration pipeline
    (``pipelines/recalibrate.py``), whose step reads the labelled rows back from this detector at
    ``service_url`` (its log is on the detector's own volume) with the detector's label maturity.
    """
    if settings.trigger_mode == "local" and settings.recalibrate_command:
        return lambda data: run_local(str(settings.recalibrate_command))
    if settings.trigger_mode == "cluster" and settings.service_url:
        arguments = {"detector_url": settings.service_url, "maturity_seconds": settings.label_maturity_s}
        return lambda data: submit_kfp_run(
            settings.kfp_host,
            settings.recalibrate_package,
            arguments,
            reason=str(data.get("kind", "quality")),
            action="recalibrate",
        )
    return None
