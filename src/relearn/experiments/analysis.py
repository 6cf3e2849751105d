"""An experiment from its joined predictions: daily looks of the always-valid test, then the result.

The unit is the card and its observation is fixed once made: the loss over the card's first
``unit_window_days`` in the experiment, counted once that window closed and its chargebacks matured
(``label_maturity_days``). A card's loss over the whole experiment so far would grow from look to look
(more transactions, more labels), so the difference the confidence sequence pins down would move and the
intersection over looks would exclude the truth. Each arm's budget threshold is taken over all of its
traffic up to the look, as the fraud team's review queue would be. ``tau`` comes from the plan recorded at
start; choosing it from the data would void the guarantee.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from relearn.experiments.guardrails import GuardrailCheck
from relearn.experiments.metrics import arm_metrics, row_losses
from relearn.experiments.result import Result, decide
from relearn.experiments.sequential import ArmStats, Look, look
from relearn.experiments.settings import ExperimentSettings
from relearn.features.spec import LABEL

DAY_S = 86400.0


def window_units(
    frame: pd.DataFrame, cut: float, settings: ExperimentSettings, time_column: str = "time"
) -> dict[str, ArmStats]:
    """Per arm, the statistics of the cards whose window and label maturity ended by ``cut`` (epoch s)."""
    window = settings.unit_window_days * DAY_S
    ready = cut - settings.label_maturity_days * DAY_S
    seen = frame[frame[time_column] < cut]
    out = {}
    for arm, rows in seen.groupby("arm", sort=True):
        loss, _ = row_losses(rows, settings)
        times = rows[time_column].to_numpy(np.float64)
        first = rows.groupby("user_id")[time_column].transform("min").to_numpy(np.float64)
        keep = (first + window <= ready) & (times < first + window)
        if keep.any():
            out[str(arm)] = ArmStats.of(pd.Series(loss[keep]).groupby(rows["user_id"].to_numpy()[keep]).sum())
    return out


def daily_looks(
    frame: pd.DataFrame,
    control: str,
    treatment: str,
    *,
    tau: float,
    settings: ExperimentSettings | None = None,
    time_column: str = "time",
) -> tuple[list[float], list[Look]]:
    """The test after each day (``frame[time_column]``: epoch seconds).

    Days before both arms hold ``min_units`` cards are skipped: the normal approximation needs a burn-in.
    """
    s = settings or ExperimentSettings()
    frame = frame[frame["arm"].isin([control, treatment])]
    times = frame[time_column].to_numpy(np.float64)
    start = times.min()
    last_day = math.floor((times.max() - start) / DAY_S) + 1
    days, looks, previous = [], [], None
    for day in range(1, last_day + 1):
        stats = window_units(frame, start + day * DAY_S, s, time_column)
        if control not in stats or treatment not in stats:
            continue
        if min(stats[control].n, stats[treatment].n) < s.min_units:
            continue
        previous = look(stats[control], stats[treatment], tau=tau, alpha=s.alpha, previous=previous)
        days.append(float(day))
        looks.append(previous)
    return days, looks


def analyze(
    name: str,
    frame: pd.DataFrame,
    control: str,
    treatment: str,
    *,
    tau: float,
    settings: ExperimentSettings | None = None,
    guardrails: GuardrailCheck | None = None,
    time_column: str = "time",
) -> tuple[Result, list[float], list[Look]]:
    """The result now, with the looks behind it (for :func:`relearn.experiments.result.plot_effect`)."""
    s = settings or ExperimentSettings()
    days, looks = daily_looks(frame, control, treatment, tau=tau, settings=s, time_column=time_column)
    elapsed = (frame[time_column].max() - frame[time_column].min()) / DAY_S
    result = decide(
        name,
        control,
        treatment,
        looks,
        days=float(elapsed),
        max_days=s.max_days,
        guardrails=guardrails,
        arms=arm_metrics(frame[frame["arm"].isin([control, treatment])], s),
    )
    return result, days, looks


def analyze_all(
    name: str,
    frame: pd.DataFrame,
    control: str,
    *,
    tau: float,
    settings: ExperimentSettings | None = None,
    guardrails: GuardrailCheck | None = None,
    time_column: str = "time",
) -> dict[str, tuple[Result, list[float], list[Look]]]:
    """Every other arm against the control, each test at alpha / (arms - 1) (Bonferroni).

    With k arms the chance that any comparison declares a false winner stays at most alpha.
    """
    s = settings or ExperimentSettings()
    others = sorted(str(a) for a in frame["arm"].unique() if a != control)
    if control not in set(frame["arm"]) or not others:
        raise ValueError(f"need the control {control!r} and another arm, got {sorted(set(frame['arm']))}")
    each = s.model_copy(update={"alpha": s.alpha / len(others)})
    return {
        arm: analyze(
            name, frame, control, arm, tau=tau, settings=each, guardrails=guardrails, time_column=time_column
        )
        for arm in others
    }


def baseline(
    frame: pd.DataFrame, settings: ExperimentSettings | None = None, time_column: str = "time"
) -> dict:
    """What the plan needs, measured on recent labelled traffic of the champion (joined predictions).

    Returns cards per day (new cards), the loss per card's mean and standard deviation (over the cards
    whose window and labels are complete) and the frauds labelled: none means labels are not flowing.
    """
    s = settings or ExperimentSettings()
    frame = frame.assign(arm="history")
    times = frame[time_column].to_numpy(np.float64)
    span_days = max((times.max() - times.min()) / DAY_S, 1.0)
    stats = window_units(frame, times.max() + 1.0, s, time_column).get("history")
    return {
        "cards_per_day": frame["user_id"].nunique() / span_days,
        "base_loss": float(stats.mean) if stats else None,
        "loss_sd": float(np.sqrt(stats.var)) if stats else None,
        "cards": int(stats.n) if stats else 0,
        "frauds": int(frame[LABEL].sum()),
    }
