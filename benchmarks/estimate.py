"""``python -m benchmarks.estimate`` (drift environment): label-free performance estimate vs realized.

For the default world and a covariate-shift scenario, in time order: a champion (a logistic regression,
:func:`relearn.monitoring.simulate.reference_model`) is fitted on one week, its scores are recalibrated on
the following days (the detector's reference sample, held out from its training), and every later day is a
window. Per window the detector's estimate (:func:`relearn.monitoring.estimate.estimate_at_budget`) is
compared with the realized precision and recall at the alert budget, beside what is known without it: the
realized value of the last window whose labels have matured (stale by the chargeback delay). Then, when
would each have shown the shift: the first window (at or after the onset) that moves more than 3 standard
deviations of the pre-onset windows from their mean, and the day that becomes known (the window's end for
the estimate, plus the label maturity for the realized value). Prints one table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.table import Row, render

START = datetime(2024, 1, 1, tzinfo=UTC)
TRAIN_START = 7  # days after START: entity windows are filled after a week
TRAIN_DAYS, CALIBRATION_DAYS = 7, 3


class EstimateBench(BaseSettings):
    """Estimated vs realized precision and recall at the alert budget, per daily window; one table."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_ESTIMATE_",
        cli_prog_name="python -m benchmarks.estimate",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    scenarios: list[str] = Field(["none", "covariate_shift"], description="Worlds to compare.")
    days: int = Field(35, ge=24, description="Days generated (training, calibration, then windows).")
    onset_day: int = Field(24, ge=18, description="Day (from the start) the scenario begins.")
    users: int = Field(3000, ge=500, description="Cardholders in the world (more: more frauds per window).")
    seed: int = Field(7, description="Generator seed.")
    windows: bool = Field(False, description="Also print every window's estimated and realized values.")
    maturity_quantile: float = Field(
        0.9, gt=0, lt=1, description="Label maturity: this quantile of the chargeback delay."
    )

    def cli_cmd(self) -> None:
        rows: list[Row] = []
        for scenario in self.scenarios:
            rows += scenario_rows(self, scenario)
        print(render(rows))


def windows_of(bench: EstimateBench, scenario: str) -> tuple[pd.DataFrame, float, pd.Timestamp]:
    """Per daily window: estimated and realized precision and recall; the label maturity (days); onset."""
    from relearn.data.generator import GeneratorConfig
    from relearn.monitoring.estimate import estimate_at_budget, fit_calibrator
    from relearn.monitoring.quality import at_budget
    from relearn.monitoring.settings import ALERT_BUDGET
    from relearn.monitoring.simulate import model_input_stream, reference_model

    onset = START + timedelta(days=bench.onset_day)
    config = GeneratorConfig(
        days=bench.days,
        n_users=bench.users,
        n_merchants=bench.users // 8,
        seed=bench.seed,
        scenario=scenario,
        onset=onset,
        start=START,
    )
    stream, labels, _ = model_input_stream(config)
    day = (stream["event_timestamp"] - pd.Timestamp(START)).dt.days
    model = reference_model(stream[(day >= TRAIN_START) & (day < TRAIN_START + TRAIN_DAYS)])
    calibration = stream[
        (day >= TRAIN_START + TRAIN_DAYS) & (day < TRAIN_START + TRAIN_DAYS + CALIBRATION_DAYS)
    ]
    calibration_scores = model(calibration)
    calibration_labels = calibration["is_fraud"].to_numpy(np.float64)
    calibrate = fit_calibrator(calibration_scores, calibration_labels)
    # Without an estimate, what is known is the last labelled sample's value: the reference's.
    known = at_budget(calibration_scores, calibration_labels, ALERT_BUDGET)
    delay = labels.merge(stream[["transaction_id", "event_timestamp"]], on="transaction_id")
    lag = (delay["chargeback_timestamp"] - delay["event_timestamp"]).dt.total_seconds() / 86400
    rows = []
    for d in range(TRAIN_START + TRAIN_DAYS + CALIBRATION_DAYS, bench.days):
        window = stream[day == d]
        scores, y = model(window), window["is_fraud"].to_numpy(np.float64)
        est = estimate_at_budget(scores, ALERT_BUDGET, calibrate)
        raw = estimate_at_budget(scores, ALERT_BUDGET)  # the scores taken as probabilities
        precision, recall = at_budget(scores, y, ALERT_BUDGET)
        rows.append(
            dict(
                day=d,
                frauds=int(y.sum()),
                est_precision=est.precision,
                est_recall=est.recall,
                raw_precision=raw.precision,
                raw_recall=raw.recall,
                reference_precision=known[0],
                reference_recall=known[1],
                precision=precision,
                recall=recall,
            )
        )
    return pd.DataFrame(rows), float(np.quantile(lag, bench.maturity_quantile)), pd.Timestamp(onset)


def first_move(values: pd.Series, days: pd.Series, onset_day: int) -> int | None:
    """The first day at or after the onset whose value is > 3 sd of the pre-onset days from their mean."""
    pre = values[days < onset_day]
    moved = (days >= onset_day) & ((values - pre.mean()).abs() > 3 * pre.std())
    return int(days[moved].iloc[0]) if moved.any() else None


def scenario_rows(bench: EstimateBench, scenario: str) -> list[Row]:
    frame, maturity, _ = windows_of(bench, scenario)
    if bench.windows:
        print(scenario, frame.round(3).to_string(index=False), sep="\n")
    rows = []
    for metric in ("recall", "precision"):
        mae = {
            name: float((frame[f"{name}_{metric}"] - frame[metric]).abs().mean())
            for name in ("est", "raw", "reference")
        }
        rows.append(
            Row(
                f"{scenario}: MAE of {metric} at budget, estimated | raw scores | reference",
                size=f"{len(frame)} daily windows, {frame['frauds'].mean():.0f} frauds/window",
                throughput=f"{mae['est']:.3f} | {mae['raw']:.3f} | {mae['reference']:.3f}",
                ratio=f"{mae['est'] / mae['reference']:.2f}x",
                aim="estimated < reference",
                ok=mae["est"] < mae["reference"],
                value=mae["est"],
            )
        )
    if scenario != "none":
        est_day = first_move(frame["est_recall"], frame["day"], bench.onset_day)
        real_day = first_move(frame["recall"], frame["day"], bench.onset_day)
        known_est = None if est_day is None else est_day + 1
        known_real = None if real_day is None else real_day + 1 + maturity
        lead = "" if known_est is None or known_real is None else f"{known_real - known_est:+.1f} d"
        rows.append(
            Row(
                f"{scenario}: day the recall shift is known (estimate | realized)",
                size=f"onset day {bench.onset_day}, maturity {maturity:.1f} d",
                throughput=f"{known_est} | {known_real if known_real is None else round(known_real, 1)}",
                ratio=lead,
                aim="estimate first",
                ok=known_est is not None and (known_real is None or known_est < known_real),
            )
        )
    return rows


if __name__ == "__main__":
    CliApp.run(EstimateBench)
