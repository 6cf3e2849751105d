"""What a detector process runs, by ``role``: the monitor (``all``) or an ingest replica (``ingest``).

``all`` is the one detector of a single-process install and the monitor of a scaled one: the SQLite log,
the monitor thread (with the relay from the replicas' shared log when ``shared_log_url`` is set), the label
join, the skew check and retention. ``ingest`` is a stateless sink appending to the shared log
(:mod:`relearn.monitoring.shared_log`); it starts no thread of the monitor's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relearn.monitoring import store, trigger
from relearn.monitoring.alerts import Alerter
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor
from relearn.monitoring.settings import DriftSettings

log = logging.getLogger("relearn.monitoring.server")


def start_monitor(
    settings: DriftSettings, metrics: Metrics, db: Path, state: dict[str, Any]
) -> Callable[[], None]:
    """The log, the monitor and its jobs; returns what stops them."""
    state["log"] = store.EventLog(
        db, settings.sqlite_synchronous, settings.commit_wait_ms, settings.max_batch
    )
    state["labels_conn"] = store.connect(db, settings.sqlite_synchronous)
    alerter = Alerter(
        settings.cooldown_s,
        settings.webhook_url,
        trigger.retrain_action(settings),
        recalibrate=trigger.recalibrate_action(settings),
    )
    state["monitor"] = Monitor(settings, metrics, alerter)
    state["monitor"].start()
    skew = _skew_job(settings, metrics, db)
    if skew is not None:
        skew.start()
    retention = _retention_job(settings, metrics, db)
    retention.start()

    def stop() -> None:
        retention.stop()
        if skew is not None:
            skew.stop()
        state["monitor"].stop()
        state["log"].close()

    return stop


def start_ingest(
    settings: DriftSettings, metrics: Metrics, db: Path, state: dict[str, Any]
) -> Callable[[], None]:
    """An ingest replica: the shared log only (PostgreSQL unreachable: the replica does not start)."""
    from relearn.monitoring.shared_log import SharedEventLog

    state["log"] = SharedEventLog(
        settings.shared_log_url,
        settings.shard,
        settings.commit_wait_ms,
        settings.max_batch,
        max_backlog=settings.shared_log_max_events,
        backlog_gauge=metrics.shared_backlog,
    )
    log.info("ingest replica started", extra={"shard": state["log"].shard})
    return state["log"].close


def _skew_job(settings: DriftSettings, metrics: Metrics, db: Path) -> Any:
    """The periodic training/serving skew check, or None when it is not configured."""
    if settings.skew_lake_dir is None or settings.skew_interval_seconds is None:
        if settings.skew_lake_dir is not None or settings.skew_interval_seconds is not None:
            log.warning("skew check off: set both skew_lake_dir and skew_interval_seconds")
        return None
    from relearn.monitoring.skew_job import SkewJob, SkewMetrics

    return SkewJob(
        db,
        settings.skew_lake_dir,
        settings.skew_interval_seconds,
        SkewMetrics(metrics.registry),
        sample=settings.skew_sample,
        track=settings.skew_track,
    )


def _retention_job(settings: DriftSettings, metrics: Metrics, db: Path) -> Any:
    """The periodic retention of the inference log (by age and size)."""
    from relearn.monitoring.monitor import PENDING_LOOKBACK
    from relearn.monitoring.retention import Policy, RetentionJob, RetentionMetrics

    policy = Policy(
        settings.log_max_age_s, settings.log_max_bytes, settings.predictions_max_age_s, PENDING_LOOKBACK
    )
    return RetentionJob(db, policy, settings.retention_interval_s, RetentionMetrics(metrics.registry))
