"""Recalibration, the response to a prior (label) shift: same weights, a threshold re-fitted to the budget.

``python -m relearn.model.recalibrate --help``. Under a prior shift the champion still ranks well, but its
fixed threshold flags a share of the traffic other than the alert budget (more fraud: more high scores).
This step scores the newest labelled live traffic of the inference log (the rows a canary's backtest reads,
:mod:`relearn.monitoring.served`, from the log file or the drift detector's API) with the champion's own
network, re-fits the decision threshold so the top ``alert_budget`` share is flagged
(:func:`relearn.model.evaluate.threshold_at_budget`, serving's rule) and registers the champion's artifact
with the new threshold as a new version (alias ``challenger``, lineage tag ``recalibrated_from``). The new
version goes through the same shadow / canary path as a retrained one.

Refused (nothing registered) with too few labelled rows or frauds to re-fit on.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.errors import RelearnError
from relearn.features.spec import MODEL_INPUTS
from relearn.settings import ALERT_BUDGET, RelearnSettings

log = logging.getLogger(__name__)


class RecalibrationError(RelearnError, RuntimeError):
    """Recalibration is not possible (no champion, too few labelled rows): nothing was registered."""


def labelled_traffic(rows: Any, since: float, maturity_s: float, limit: int) -> pd.DataFrame:
    """The newest ``limit`` matured live predictions' model inputs and ``label`` (a ServedRows source)."""
    labels = rows.labels(since, maturity_s, limit)
    found: dict[str, dict[str, Any]] = {}
    after, more = 0, True
    while more:
        page, after, more = rows.inputs(since, after)
        found.update((key, row) for key, row in page.items() if key in labels)
    frame = pd.DataFrame.from_dict(found, orient="index", columns=list(MODEL_INPUTS))
    return frame.assign(label=[labels[key] for key in frame.index]).reset_index(drop=True)


def _champion_artifact(settings: RelearnSettings, version: str, into: Path) -> Path:
    """The champion's torch artifact directory, downloaded into ``into``."""
    from mlflow.artifacts import download_artifacts

    from relearn.model.net import CONFIG_FILE
    from relearn.model.registry import TORCH_ARTIFACT, _client

    source = _client(settings).get_model_version_download_uri(settings.model_name, version)
    local = Path(
        download_artifacts(artifact_uri=source, dst_path=str(into), tracking_uri=settings.tracking_uri())
    )
    found = [d for d in (local / "artifacts" / TORCH_ARTIFACT, local) if (d / CONFIG_FILE).exists()]
    if not found:
        raise RecalibrationError(f"version {version} holds no relearn model artifact")
    return found[0]


def _at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    caught = float(labels[flagged].sum())
    return {
        "flagged_share": float(flagged.mean()),
        "precision": caught / max(1, int(flagged.sum())),
        "recall": caught / max(1.0, float(labels.sum())),
    }


def recalibrate(
    settings: RelearnSettings,
    traffic: pd.DataFrame,
    *,
    alert_budget: float = ALERT_BUDGET,
    min_rows: int = 1000,
    min_frauds: int = 10,
) -> dict[str, Any]:
    """Register the champion with its threshold re-fitted to ``alert_budget`` on ``traffic``.

    Args:
        settings: MLflow and the registered model.
        traffic: Labelled live rows (MODEL_INPUTS + ``label``), e.g. from :func:`labelled_traffic`.
        alert_budget: Share of transactions the fraud team reviews.
        min_rows: Fewest labelled rows to re-fit on.
        min_frauds: Fewest frauds among them (for the metrics the summary reports).

    Returns:
        The summary: ``model_version`` (new), ``recalibrated_from``, ``gate``, thresholds before and after,
        and precision / recall / flagged share at each on the traffic.

    Raises:
        RecalibrationError: No champion, or too few rows or frauds; nothing is registered.
    """
    import mlflow

    from relearn.model.evaluate import threshold_at_budget
    from relearn.model.net import load_model, score
    from relearn.model.registry import CHAMPION, get_alias_version, get_version_tags, register, setup_mlflow

    champion = get_alias_version(settings, CHAMPION)
    if champion is None:
        raise RecalibrationError(f"no version of {settings.model_name} holds the alias {CHAMPION!r}")
    frauds = int(traffic["label"].sum()) if len(traffic) else 0
    if len(traffic) < min_rows or frauds < min_frauds:
        raise RecalibrationError(
            f"too few labelled rows to re-fit the threshold on: {len(traffic)} rows ({frauds} frauds), "
            f"need min_rows={min_rows} and min_frauds={min_frauds}"
        )
    labels = traffic["label"].to_numpy(np.float64)
    with tempfile.TemporaryDirectory(prefix="relearn-recalibrate-") as tmp:
        artifact = _champion_artifact(settings, champion, Path(tmp))
        net, preprocessor, metadata = load_model(artifact)
        scores = score(net, preprocessor, traffic)
        before = float(metadata.get("threshold", 0.5))
        after = float(threshold_at_budget(scores, alert_budget))
        metrics: dict[str, Any] = {"threshold_before": before, "threshold_after": after, "rows": len(traffic)}
        metrics |= {f"{k}_before": v for k, v in _at(scores, labels, before).items()}
        metrics |= {f"{k}_after": v for k, v in _at(scores, labels, after).items()}
        tags = get_version_tags(settings, champion)
        setup_mlflow(settings)
        with mlflow.start_run(run_name=f"recalibrate-v{champion}") as run:
            mlflow.log_params({"recalibrated_from": champion, "alert_budget": alert_budget, "frauds": frauds})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            info = register(
                artifact,
                settings=settings,
                run_id=run.info.run_id,
                metrics=metrics,
                train_sample=traffic,
                lineage={
                    "data_window": f"served traffic, newest {len(traffic)} labelled rows",
                    "git_sha": tags.get("git_sha", "unknown"),  # the weights' code
                    "pipeline_run_id": "recalibrate",
                    "recalibrated_from": champion,
                    "warm_started_from": tags.get("warm_started_from", ""),
                },
                threshold=after,
            )
    headline = (
        f"v{info.version} = v{champion}'s weights, threshold {before:.4f} -> {after:.4f}: flags "
        f"{metrics['flagged_share_before']:.2%} -> {metrics['flagged_share_after']:.2%} of {len(traffic)} "
        f"recent labelled rows (budget {alert_budget:.1%})"
    )
    log.info("recalibrated", extra={"version": info.version, "from": champion, "threshold": after})
    return {
        "model_version": info.version,
        "recalibrated_from": champion,
        "gate": f"PASSED (recalibration: same weights, threshold re-fitted on {len(traffic)} labelled rows)",
        "headline": headline,
        **metrics,
    }


def run_step(
    detector_url: str,
    maturity_seconds: float,
    alert_budget: float,
    min_rows: int,
    min_frauds: int,
    decision_path: str,
) -> tuple[str, bool]:
    """The pipeline step (``relearn-recalibrate`` in a cluster): re-fit on the detector's labelled rows.

    Too few labels is a decision, not a failure: the step says why in its Markdown and reports
    ``passed=False``, so the deploy step starts nothing and the run ends green with the reason.

    Returns:
        The new version (empty when not recalibrated) and whether one was registered.
    """
    from relearn.monitoring.served import DetectorRows

    traffic = labelled_traffic(DetectorRows(detector_url), 0.0, maturity_seconds, 5000)
    try:
        summary = recalibrate(
            RelearnSettings(), traffic, alert_budget=alert_budget, min_rows=min_rows, min_frauds=min_frauds
        )
    except RecalibrationError as error:
        Path(decision_path).write_text(f"# Not recalibrated\n\n{error}\n")
        return "", False
    Path(decision_path).write_text(f"# Recalibrated\n\n{summary['headline']}\n")
    return str(summary["model_version"]), True


class RecalibrateCommand(BaseSettings):
    """Re-fit the champion's threshold to the alert budget on recent labelled traffic; register it."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_RECALIBRATE_",
        cli_prog_name="python -m relearn.model.recalibrate",
        cli_kebab_case=True,
        cli_hide_none_type=True,
    )

    inference_log: Path | None = Field(None, description="The drift detector's inference log (local mode).")
    detector_url: str | None = Field(None, description="The drift detector's URL (a cluster).")
    since: float = Field(0.0, ge=0, description="Only traffic served after this epoch time.")
    maturity_seconds: float = Field(
        0.0, ge=0, description="Label maturity (the detector's label_maturity_s)."
    )
    limit: int = Field(5000, ge=1, description="Newest labelled rows re-fitted on.")
    alert_budget: float = Field(ALERT_BUDGET, gt=0, lt=1, description="Share of transactions reviewed.")
    min_rows: int = Field(1000, ge=1, description="Fewest labelled rows to re-fit on.")
    min_frauds: int = Field(10, ge=1, description="Fewest frauds among them.")
    summary_json: Path | None = Field(None, description="Write the summary here.")

    @model_validator(mode="after")
    def _one_source(self) -> RecalibrateCommand:
        if (self.inference_log is None) == (self.detector_url is None):
            raise ValueError("give exactly one of inference_log and detector_url")
        return self

    def cli_cmd(self) -> None:
        """Recalibrate and print the summary."""
        from relearn.monitoring.served import DetectorRows, LogFile

        rows = LogFile(self.inference_log) if self.inference_log else DetectorRows(str(self.detector_url))
        traffic = labelled_traffic(rows, self.since, self.maturity_seconds, self.limit)
        try:
            summary = recalibrate(
                RelearnSettings(),
                traffic,
                alert_budget=self.alert_budget,
                min_rows=self.min_rows,
                min_frauds=self.min_frauds,
            )
        except RecalibrationError as error:
            raise SystemExit(f"not recalibrated: {error}") from None
        text = json.dumps(summary, indent=2, default=str)
        if self.summary_json:
            self.summary_json.write_text(text)
        print(text)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m relearn.model.recalibrate``: invalid settings exit naming them."""
    from pydantic import ValidationError

    try:
        CliApp.run(RecalibrateCommand, cli_args=argv)
    except ValidationError as error:
        raise SystemExit(f"not recalibrated, invalid settings: {error}") from None


if __name__ == "__main__":
    main()
