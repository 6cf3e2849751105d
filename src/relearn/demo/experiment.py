"""``make demo ARGS="--experiment ab"``: the retrained challenger is A/B tested against the champion.

Instead of shadow then canary, the challenger that passed the gate is served by its own predictor and half
the cards are assigned to it (sticky per card: the transformer reads the running experiment from the store
under the demo's RELEARN_HOME and marks each arm's rows ``x-relearn-arm``, the local router routes them),
until the live stream ends. The plan comes from the champion's labelled traffic so far (refused when no
chargeback has come in: labels are not flowing). At the end the predictions the replay received (each names
the version that scored it) are joined with the chargebacks received by then and analysed by the
experiments' own code (always-valid mSPRT on the loss per card, the money view), and the report gets the
result, the money view per arm and the cumulative-effect plot. A demo has a few thousand cards: a decision
is unlikely, and the section says how large a difference could still hide (the confidence sequence).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relearn.experiments.settings import ExperimentSettings

NAME = "demo-ab"
ACTOR = "relearn-demo"
EPOCH = pd.Timestamp(0, tz="UTC")
# Demo time runs days in minutes: a card's first day is its observation, its chargebacks count two days
# later (median delay 1 day; the demo's label maturity), a burn-in the ~6 stream days after a retraining
# reach (about 700 complete cards per arm in the default demo).
DEMO = {"unit_window_days": 1.0, "label_maturity_days": 2.0, "min_units": 200}


def experiment_settings() -> ExperimentSettings:
    """The experiment settings of the demo (RELEARN_EXPERIMENT_* costs and alpha, the demo's windows)."""
    return ExperimentSettings().model_copy(update=DEMO)


def store_path(home: Path) -> Path:
    """The store the demo's transformer reads: ``default_store()`` under its RELEARN_HOME."""
    return home / "experiments" / "experiments.json"


def joined(records: pd.DataFrame, labels: pd.DataFrame, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """Answered predictions joined with the chargebacks received by ``until`` (all when None).

    Returns the columns the analysis reads: arm (the version that scored), user_id, score, label (1 when
    the chargeback came in), amount and time (event time, epoch seconds).
    """
    from relearn.features.spec import LABEL

    ok = records[(records["code"] == 0) & records["model_version"].notna() & records["score"].notna()]
    received = labels if until is None else labels[labels["chargeback_timestamp"] <= until]
    charged = set(received["transaction_id"])
    # Seconds since the epoch whatever the unit: a world read back from Parquet holds microseconds.
    seconds = (pd.to_datetime(ok["event_timestamp"], utc=True) - EPOCH) / pd.Timedelta(seconds=1)
    return pd.DataFrame(
        {
            "arm": ok["model_version"].astype(str).to_numpy(),
            "user_id": ok["user_id"].to_numpy(),
            "score": ok["score"].to_numpy(np.float64),
            LABEL: ok["transaction_id"].isin(charged).astype(int).to_numpy(),
            "amount": ok["amount"].to_numpy(np.float64),
            "time": seconds.to_numpy(np.float64),
        }
    )


def start(home: Path, champion: str, challenger: str, history: pd.DataFrame) -> dict[str, Any]:
    """Start the 50/50 experiment with the plan from ``history`` (the champion's joined predictions).

    Returns the split and the plan's words, or ``refused`` with the reason (nothing changed).
    """
    from relearn.experiments.analysis import baseline
    from relearn.experiments.sequential import plan
    from relearn.experiments.store import ExperimentStore
    from relearn.rollout.audit import AuditLog

    s = experiment_settings()
    measured = baseline(history, s)
    if not measured["frauds"] or not measured["base_loss"] or not measured["loss_sd"]:
        return {"refused": f"no labels flowing yet ({measured['frauds']} frauds, {measured['cards']} cards)"}
    the_plan = plan(
        measured["cards_per_day"],
        measured["base_loss"],
        measured["loss_sd"],
        alpha=s.alpha,
        power=s.power,
        relative_effect=s.relative_effect,
        control_share=0.5,
        max_days=s.max_days,
        lag_days=s.unit_window_days + s.label_maturity_days,
    )
    try:
        record = ExperimentStore(store_path(home)).start(
            NAME, {champion: 50, challenger: 50}, control=champion, plan=the_plan.as_dict()
        )
    except ValueError as err:  # e.g. a second retraining while the experiment runs
        return {"refused": str(err)}
    AuditLog(store_path(home).parent / "audit.jsonl").append(
        "experiment-start", actor=ACTOR, experiment=NAME, split=record["split"]
    )
    return {"split": record["split"], "plan": the_plan.describe()}


def finish(home: Path, frame: pd.DataFrame, since: float, report_dir: Path) -> dict[str, Any] | None:
    """Analyse the experiment on ``frame`` (:func:`joined`) from ``since`` (epoch s); None if none ran.

    Writes ``experiment-effect.png``, records the result in the store (the experiment stops) and returns
    what the report shows.
    """
    from relearn.experiments.analysis import analyze_all
    from relearn.experiments.result import plot_effect
    from relearn.experiments.store import ExperimentStore

    store = ExperimentStore(store_path(home))
    try:
        record = store.get(NAME)
    except KeyError:
        return None
    s = experiment_settings()
    control, arms = record["control"], list(record["split"])
    frame = frame[(frame["time"] >= since) & frame["arm"].isin(arms)]
    if frame["arm"].nunique() < len(arms):
        return {
            "control": control,
            "arms": arms,
            "error": f"traffic reached only {sorted(set(frame['arm']))}",
        }
    results = analyze_all(NAME, frame, control, tau=record["plan"]["tau"], settings=s)
    (treatment, (result, days, looks)), *_ = results.items()
    report_dir.mkdir(parents=True, exist_ok=True)
    plot = report_dir / "experiment-effect.png"
    if looks:
        plot_effect(looks, days, plot, f"{NAME}: v{treatment} vs v{control} (loss per card)")
    out = result.as_dict()
    if record["status"] == "running":
        store.stop(NAME, f"demo ended: {out['reason']}", result={treatment: out})
    return {**out, "plan": record["plan"], "plot": str(plot) if looks else None, "looks": len(looks)}


def section(summary: dict[str, Any] | None) -> str:
    """The report's experiment section (HTML; the plot embedded by the caller's convention)."""
    import base64

    if summary is None:
        return ""
    parts = ["<h2>A/B experiment (money view, always-valid test)</h2>"]
    if "error" in summary:
        return parts[0] + f"<p>{html.escape(summary['error'])}</p>"
    effect, lower, upper = summary["effect"], summary["lower"], summary["upper"]
    words = (
        f"effect of v{summary['treatment']} on the loss per card: {effect:+.3f} "
        f"[{lower:+.3f}, {upper:+.3f}], always-valid p {summary['p_value']:.3g}"
        if effect is not None and lower is not None
        else "fewer cards than the test's burn-in: no look yet"
    )
    parts.append(
        f"<p><b>{html.escape(str(summary['decision']))}</b>"
        f"{' — winner v' + html.escape(str(summary['winner'])) if summary.get('winner') else ''}: "
        f"{html.escape(words)}; {summary['looks']} daily looks over {summary['days']:.1f} days "
        f"({html.escape(summary['reason'])}).</p>"
    )
    head = ("arm", "cards", "loss per card", "fraud missed", "review cost", "precision at budget", "recall")
    parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for arm, m in summary.get("arms", {}).items():
        role = "control" if arm == summary["control"] else "treatment"
        cells = (f"v{arm} ({role})", m["cards"], m["loss_per_card"], m["fraud_amount_missed"])
        cells += (m["review_cost"], m["precision_at_budget"], m["recall_at_budget"])
        parts.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    if summary.get("plot") and Path(summary["plot"]).exists():
        data = base64.b64encode(Path(summary["plot"]).read_bytes()).decode("ascii")
        parts.append(f"<img alt='cumulative effect' src='data:image/png;base64,{data}'>")
    return "".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    return html.escape("" if value is None else str(value))


def start_in_demo(driver: Any, challenger: str) -> dict[str, Any]:
    """Start the experiment from the demo's driver (``driver.Driver``): champion against ``challenger``.

    The plan's history is the replay so far (the champion's answers) joined with the chargebacks received
    by now; the challenger's predictor is registered with the local router already.
    """
    replay, world = driver.replay, driver.world
    champion = driver.backend.state().stable
    n = replay.position
    records = pd.concat(
        [world.stream.iloc[:n].reset_index(drop=True), replay.record.frame().iloc[:n]], axis=1
    )
    history = joined(records, world.labels, until=replay.sim_time)
    started = start(driver.home, str(champion), challenger, history)
    # The stream ran on while the challenger's predictor started: the arms route from now, not from the
    # retraining's end (a run credited 16 stream hours of the champion's answers to both arms). Every
    # request sent so far (in flight ones too) is at or before sim_time: the analysis starts just after.
    now = replay.sim_time
    since = None if now is None else (now + pd.Timedelta(microseconds=1)).isoformat()
    return {"champion": champion, "challenger": challenger, "since": since, **started}


def analysis_for(outcome: Any, out: Path) -> dict[str, Any] | None:
    """The demo's experiment result (None when none ran; ``error`` when refused or failed), never raising."""
    begun = outcome.timeline.first("experiment-start")
    if begun is None:
        return None
    if "refused" in begun:
        return {"error": f"refused: {begun['refused']}"}
    try:
        end = outcome.timeline.first("replay-end") or {}
        until = pd.Timestamp(end["sim"]) if end.get("sim") else None
        frame = joined(outcome.records, outcome.world.labels, until=until)
        since = pd.Timestamp(begun.get("since") or begun["sim"]).timestamp()
        return finish(outcome.home, frame, since, out)
    except Exception as exc:  # the report must still be written; say what failed
        return {"error": f"analysis failed: {exc!r}"}


def report_section(outcome: Any, out: Path) -> str:
    """The report's experiment section for a demo run (empty when no experiment ran)."""
    return section(analysis_for(outcome, out))


def headline(summary: dict[str, Any] | None) -> str | None:
    """The experiment's outcome in one line, for the terminal summary (None when none ran)."""
    if summary is None:
        return None
    if "error" in summary:
        return f"A/B experiment: {summary['error']}"
    said = f"winner v{summary['winner']}" if summary.get("winner") else summary["decision"]
    effect, lower, upper = summary["effect"], summary["lower"], summary["upper"]
    ci = f": effect {effect:+.2f} per card [{lower:+.2f}, {upper:+.2f}]" if lower is not None else ""
    return f"A/B experiment: {said}{ci} after {summary['looks']} daily looks"
