"""``python -m benchmarks.drift`` (drift environment): ingest rate, detection delay, false-alarm rate.

Runs in ``.venv/drift`` only (no torch / feast / kfp): the real detector server on 127.0.0.1 for the ingest
rate (client processes with keep-alive connections; acknowledged events are compared with the stored
ones), and the detector's own test (:class:`~relearn.monitoring.detector.DriftTester`, the same code the
server runs per window) on the generator's stream **in time order** for the detection delays and the
false-alarm rate. Prints one table; goals are reported as pass/MISS and never fail the run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.drift_ingest import ingest_row
from benchmarks.table import Row, render

if TYPE_CHECKING:
    from relearn.monitoring.quality import Baseline

START = datetime(2024, 1, 1, tzinfo=UTC)
REFERENCE_START = pd.Timestamp("2024-01-08", tz="UTC")
REFERENCE_DAYS = 7
ONSET = datetime(2024, 1, 18, tzinfo=UTC)
SCENARIOS = ("covariate_shift", "data_bug_units", "data_bug_nulls", "label_shift", "concept_drift")
WITH_LABELS = ("label_shift",)  # prior shift: tested on the windows' labels (fraud prevalence)
QUALITY_WINDOW = 4000  # labelled predictions in the rolling quality (as in tests/drift/test_labels.py)
QUALITY_STEP = 1000  # predictions between label updates (each update tests the rolling window)


class DriftBench(BaseSettings):
    """Benchmark the drift detector and print one table (goals from the monitoring issue)."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_DRIFT_",
        cli_prog_name="python -m benchmarks.drift",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    quick: bool = Field(False, description="Fewer ingest events (the false-alarm run keeps >= 100 windows).")
    events: int = Field(60_000, ge=1000, description="Events posted in the ingest run (request+response).")
    clients: int = Field(4, ge=1, le=64, description="Client processes posting concurrently.")
    connections: int = Field(16, ge=1, le=256, description="Keep-alive connections per client process.")
    batch: int = Field(64, ge=2, description="Events per POST in the batched-mode ingest row.")
    ingest_only: bool = Field(False, description="Only the ingest rows (binary vs batched mode).")
    window: int = Field(1000, ge=50, description="Events per window.")
    p_val: float = Field(0.01, gt=0, lt=1, description="Family-wise significance per window.")
    stationary_days: int = Field(50, ge=20, description="Days of the stationary world (>= 100 windows).")
    seed: int = Field(11, ge=0, description="Generator seed of the stationary world.")

    def cli_cmd(self) -> None:
        """Run and print the table."""
        n = self.events // 4 if self.quick else self.events
        rows = [ingest_row(n, self.clients, self.connections)]
        # The predictor's logger: one sender per pod, batches of 64; a few pods post at once.
        batched = ingest_row(4 * n, self.clients, 2, batch=self.batch)
        rows.append(batched)
        rows.append(
            Row(
                "ingest, batched / binary mode",
                f"{self.batch} events per POST",
                None,
                f"{batched.value / rows[0].value:.1f}x",
                "per detector process, same run",
                ">= 3x",
                batched.value >= 3 * rows[0].value,
                batched.value / rows[0].value,
            )
        )
        rows.append(ingest_row(max(1000, n // 4), 1, 5, "one KServe logger: 5 workers"))
        if self.ingest_only:
            print(render(rows))
            return
        rows += detection_rows(self.window, self.p_val)
        rows.append(quality_row())
        rows.append(quality_false_alarm_row(self.stationary_days, self.seed))
        rows.append(false_alarm_row(self.window, self.p_val, self.stationary_days, self.seed))
        print(render(rows))


# -- detection -----------------------------------------------------------------------------------------
def _tester(reference: pd.DataFrame, p_val: float):
    from relearn.monitoring.detector import DriftTester
    from relearn.monitoring.settings import NON_STATIONARY_INPUTS

    return DriftTester(reference, p_val=p_val, exclude=list(NON_STATIONARY_INPUTS))


def _world(
    scenario: str, days: int, seed: int, onset: datetime | None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    from relearn.data.generator import GeneratorConfig
    from relearn.monitoring.simulate import model_input_stream, time_ordered, toy_scores

    config = GeneratorConfig(
        days=days, n_users=1200, n_merchants=150, seed=seed, scenario=scenario, start=START, onset=onset
    )
    stream, _, when = model_input_stream(config)
    stream["score"] = toy_scores(stream, seed=1)
    reference, rest = time_ordered(stream, REFERENCE_START, REFERENCE_DAYS)
    return reference, rest, int((rest["event_timestamp"] < when).sum())


def detection_rows(window: int, p_val: float) -> list[Row]:
    """Per scenario: events after the onset until the end of the first flagged window (time order)."""
    from relearn.monitoring.simulate import count_windows

    rows = []
    for scenario in SCENARIOS:
        started = time.perf_counter()
        reference, rest, onset = _world(scenario, 22, 7, ONSET)
        tester = _tester(reference, p_val)
        early, delay = 0, None
        for i, w in enumerate(count_windows(rest, window)):
            end = (i + 1) * window
            labels = w["is_fraud"].to_numpy() if scenario in WITH_LABELS else None
            if tester.test(w, w["score"].to_numpy(), labels).is_drift:
                if end <= onset:
                    early += 1
                elif delay is None:
                    delay = end - onset
                    break
        seconds = time.perf_counter() - started
        found = "not detected" if delay is None else f"{delay} events ({delay / window:.2f} windows)"
        note = {"label_shift": "with the windows' labels", "concept_drift": "inputs: see quality row"}.get(
            scenario, ""
        )
        rows.append(
            Row(
                f"detect {scenario}",
                f"{len(rest) // window} windows",
                seconds,
                found,
                f"{early} early{'; ' + note if note else ''}",
                "<= 2 windows after onset, none before",
                early == 0 and delay is not None and delay <= 2 * window,
                None if delay is None else float(delay),
            )
        )
    return rows


def quality_alarms(
    scores: np.ndarray, labelled: np.ndarray, baseline: Baseline, start: int = QUALITY_WINDOW
) -> list[tuple[int, float, bool]]:
    """The monitor's quality rule, one label update every QUALITY_STEP events.

    Each update tests the newest QUALITY_WINDOW predictions with their chargebacks (as once they have all
    arrived) against ``baseline`` with the detector's default settings; returns ``(end, p-value, alarm)``
    per update, an alarm once ``quality_persistence`` consecutive updates dropped significantly.
    """
    from relearn.monitoring.quality import caught_at_budget, recall_drop_p_value
    from relearn.monitoring.settings import DriftSettings

    s = DriftSettings()
    out, streak = [], 0
    for end in range(max(start, QUALITY_WINDOW), len(scores) + 1, QUALITY_STEP):
        window, labels = scores[end - QUALITY_WINDOW : end], labelled[end - QUALITY_WINDOW : end]
        positives = int(labels.sum())
        p = 1.0
        if positives >= s.quality_min_positives:
            caught = caught_at_budget(window, labels, s.alert_budget)
            p = recall_drop_p_value(caught, positives, baseline, s.min_recall_ratio)
        streak = streak + 1 if p < s.quality_p_val else 0
        out.append((end, p, streak >= s.quality_persistence))
    return out


def _quality_world(scenario: str, days: int, seed: int, onset: datetime | None):
    """Stand-in champion fitted on the reference period; its baseline from the reference's labels."""
    from relearn.data.generator import GeneratorConfig
    from relearn.monitoring.quality import baseline_from
    from relearn.monitoring.settings import DriftSettings
    from relearn.monitoring.simulate import model_input_stream, reference_model, time_ordered

    config = GeneratorConfig(
        days=days, n_users=1200, n_merchants=150, seed=seed, scenario=scenario, start=START, onset=onset
    )
    stream, chargebacks, when = model_input_stream(config)
    reference, rest = time_ordered(stream, REFERENCE_START, REFERENCE_DAYS)
    champion = reference_model(reference)
    budget = DriftSettings().alert_budget
    baseline = baseline_from(champion(reference), reference["is_fraud"].to_numpy(), budget, "reference")
    assert baseline is not None
    labelled = rest["transaction_id"].isin(chargebacks["transaction_id"]).to_numpy(np.float64)
    return champion(rest), labelled, baseline, int((rest["event_timestamp"] < when).sum())


def _rule() -> str:
    from relearn.monitoring.settings import DriftSettings

    s = DriftSettings()
    return (
        f"recall@{s.alert_budget:g} < {s.min_recall_ratio:g}x ref, p<{s.quality_p_val:g}, "
        f"{s.quality_persistence} updates"
    )


def quality_row() -> Row:
    """Concept drift through labels: the monitor's recall-drop rule on a model fitted on the reference period.

    Updates every QUALITY_STEP events from 4 quality windows before the onset; the delay counts events
    after the onset until the first alarm (plus, in production, the chargeback delay).
    """
    started = time.perf_counter()
    scores, labelled, baseline, onset = _quality_world("concept_drift", 22, 7, ONSET)
    updates = quality_alarms(scores, labelled, baseline, onset - 4 * QUALITY_WINDOW)
    early = sum(alarm for end, _, alarm in updates if end <= onset)
    delay = next((end - onset for end, _, alarm in updates if alarm and end > onset), None)
    before = [p for end, p, _ in updates if end <= onset]
    found = "not detected" if delay is None else f"{delay} events ({delay / QUALITY_WINDOW:.2f} q-windows)"
    return Row(
        "quality concept_drift (labels)",
        _rule(),
        time.perf_counter() - started,
        found,
        f"ref recall {baseline.recall:.2f}; before: min p {min(before):.2g}, {early} early",
        "quality drop after onset, none before",
        early == 0 and delay is not None,
        None if delay is None else float(delay),
    )


def quality_false_alarm_row(days: int, seed: int) -> Row:
    """The monitor's quality rule on the stationary world: alarmed label updates per 100."""
    started = time.perf_counter()
    scores, labelled, baseline, _ = _quality_world("none", days, seed, None)
    updates = quality_alarms(scores, labelled, baseline)
    flagged = sum(alarm for _, _, alarm in updates)
    significant = sum(p < 0.01 for _, p, _ in updates)
    rate = 100 * flagged / len(updates)
    return Row(
        "quality false alarms (stationary)",
        f"{len(updates)} updates ({len(updates) * QUALITY_STEP // QUALITY_WINDOW} q-windows)",
        time.perf_counter() - started,
        f"{flagged} alarms",
        f"{rate:.2f} per 100; {significant} single updates p<0.01",
        "<= 1 per 100 quality windows",
        rate <= 1.0,
        rate,
    )


def false_alarm_row(window: int, p_val: float, days: int, seed: int) -> Row:
    """Flagged windows of a stationary stream in time order, per 100 windows."""
    from relearn.monitoring.simulate import count_windows

    started = time.perf_counter()
    reference, rest, _ = _world("none", days, seed, None)
    tester = _tester(reference, p_val)
    windows = count_windows(rest, window)
    flagged = sum(tester.test(w, w["score"].to_numpy()).is_drift for w in windows)
    rate = 100 * flagged / len(windows)
    return Row(
        f"false alarms (p={p_val})",
        f"{len(windows)} windows",
        time.perf_counter() - started,
        f"{flagged} flagged",
        f"{rate:.2f} per 100",
        "<= 1 per 100 windows (>= 100 windows)",
        rate <= 1.0 and len(windows) >= 100,
        rate,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.drift``."""
    CliApp.run(DriftBench, cli_args=argv)


if __name__ == "__main__":
    main()
