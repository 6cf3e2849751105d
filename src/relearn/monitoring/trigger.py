"""Retraining trigger: the KFP API in a cluster, the local pipeline as a subprocess otherwise.

KFP has no event triggers, so an incident calls ``kfp.Client().create_run_from_pipeline_package`` with the
compiled training pipeline (the drift image compiles it at build). kfp is imported lazily: only the cluster
mode needs it, and it is slow to import.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from typing import Any

log = logging.getLogger(__name__)


def submit_kfp_run(host: str | None, package_path: str, arguments: dict[str, Any] | None = None) -> str:
    """Start a run of the compiled training pipeline through the KFP API (cluster mode).

    Returns:
        The run id.
    """
    import kfp  # lazily: only the cluster mode needs it

    run = kfp.Client(host=host).create_run_from_pipeline_package(
        package_path, arguments=arguments or {}, run_name="relearn-retrain (drift)"
    )
    return str(run.run_id)


def run_local(command: str, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start the local training pipeline (default ``.venv/platform/bin/python -m pipelines.run``)."""
    argv = shlex.split(command) + list(extra_args or [])
    log.info("starting local retraining: %s", argv)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
