"""The demo's rollout controller: its command line and its policy, scaled to the demo's stream clock."""

from __future__ import annotations

import sys
from pathlib import Path

from relearn.demo.settings import DemoSettings

# Stream days a canary may wait for evidence of quality before it is rolled back.
EVIDENCE_WAIT_DAYS = 8.0


def controller_command(
    settings: DemoSettings, wall_per_day: float, options: list[str]
) -> tuple[list[str], dict[str, str]]:
    """``python -m relearn.rollout.controller`` with ``options`` (``--name value`` pairs) and its environment.

    A canary here lives a few stream days, about the chargeback delay: too few of its own predictions are
    labelled for precision at a 1 % budget to mean anything (the label gates wait for 2,000), so its
    promotion rests on the backtest: the challenger and the champion scored on the traffic served since
    the challenger's training began, once its chargebacks matured (the detector's label maturity). The
    shadow gate only guards against a broken challenger: one retrained after a concept drift is meant to
    disagree with the champion on the new pattern, so agreement and divergence get wide margins.
    """
    argv = [sys.executable, "-m", "relearn.rollout.controller", *options]
    env = {
        "RELEARN_ROLLOUT_MIN_REQUESTS": str(settings.min_canary_requests),
        "RELEARN_ROLLOUT_MIN_LABELS": "2000",
        "RELEARN_ROLLOUT_BACKTEST_LABEL_MATURITY_SECONDS": str(settings.label_maturity_days * wall_per_day),
        "RELEARN_ROLLOUT_MAX_EVIDENCE_WAIT_SECONDS": str(EVIDENCE_WAIT_DAYS * wall_per_day),
        "RELEARN_ROLLOUT_ALERT_BUDGET": str(settings.alert_budget),
        "RELEARN_ROLLOUT_SHADOW_MIN_PAIRS": "300",
        "RELEARN_ROLLOUT_SHADOW_MIN_AGREEMENT": "0.95",
        "RELEARN_ROLLOUT_SHADOW_MAX_MEAN_ABS_DIFF": "0.1",
        "RELEARN_ROLLOUT_SHADOW_MAX_KS": "0.6",
        "RELEARN_ROLLOUT_MAX_SCORE_DIVERGENCE": "0.6",
        "RELEARN_ROLLOUT_MAX_P99_SECONDS": "1.0",
    }
    return argv, env


def inference_log(home: Path) -> Path:
    """Where the demo's drift detector keeps its inference log (``RELEARN_DRIFT_DATA_DIR``)."""
    return home / "drift" / "inference-log.sqlite3"
