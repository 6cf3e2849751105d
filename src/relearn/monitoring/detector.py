"""Drift tests behind a small interface; alibi-detect (BSL 1.1 since 0.11.5) is imported only here.

:class:`DriftTester` compares a window with the reference sample: ``TabularDrift`` on the model inputs
(two-sample Kolmogorov-Smirnov for numeric, Chi-square for categorical inputs, Bonferroni or FDR
correction) and ``KSDrift`` on the prediction scores. Categorical values are coded by the model's own
vocabulary, with 0 for unknown or missing values, so a null-category bug shows up as a new category.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS

log = logging.getLogger(__name__)
SCORE = "score"


@dataclass(frozen=True)
class WindowResult:
    """Outcome of one window: per-feature p-values (and ``score``), what drifted, the threshold used."""

    p_values: dict[str, float]
    drifted: list[str]
    feature_drift: bool
    score_drift: bool
    threshold: float
    size: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_drift(self) -> bool:
        """Input or score drift."""
        return self.feature_drift or self.score_drift


def encode(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Numeric matrix of ``features``: categoricals as vocabulary codes (0 = unknown / missing)."""
    out = np.zeros((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        if name in CATEGORICAL_INPUTS:
            codes = {value: i + 1 for i, value in enumerate(CATEGORICAL_INPUTS[name])}
            out[:, j] = frame[name].astype(str).map(codes).fillna(0).to_numpy()
        else:
            out[:, j] = pd.to_numeric(frame[name], errors="coerce").fillna(0.0).to_numpy(dtype=np.float64)
    return out


class DriftTester:
    """Window-versus-reference tests. Build once per reference (alibi-detect's import takes ~10 s)."""

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        p_val: float = 0.05,
        correction: str = "bonferroni",
        exclude: tuple[str, ...] | list[str] = (),
        version: str = "local",
    ) -> None:
        from alibi_detect.cd import KSDrift, TabularDrift

        self.version = version
        self.reference = reference
        self.p_val = p_val
        self.correction = correction
        self.features = [f for f in MODEL_INPUTS if f in reference.columns and f not in set(exclude)]
        self._detectors: dict[tuple[str, ...], Any] = {}
        self._tabular = TabularDrift
        # The score test is one more member of the family: under Bonferroni each of the n + 1 tests runs
        # at p_val / (n + 1), so a window's false-alarm rate stays at most p_val.
        n = len(self.features) + (SCORE in reference)
        self._family = n if correction == "bonferroni" else 1
        self._score = (
            KSDrift(reference[SCORE].to_numpy(np.float64), p_val=p_val / self._family)
            if SCORE in reference
            else None
        )

    def _tabular_for(self, features: tuple[str, ...]) -> Any:
        """One TabularDrift per feature subset (full model inputs, or the raw-request subset)."""
        if features not in self._detectors:
            categorical = {j: None for j, name in enumerate(features) if name in CATEGORICAL_INPUTS}
            self._detectors[features] = self._tabular(
                encode(self.reference, list(features)),
                p_val=self.p_val * len(features) / max(len(features), self._family),
                categories_per_feature=categorical,
                correction=self.correction,
            )
        return self._detectors[features]

    def test(self, window: pd.DataFrame, scores: np.ndarray | None = None) -> WindowResult:
        """Test one window of inputs (and the scores paired with it).

        Args:
            window: Rows of features; columns not present are not tested.
            scores: Prediction scores of the window (may be empty).

        Returns:
            The window's p-values and verdict. Feature drift uses the corrected threshold; score drift is
            one more member of the Bonferroni family.
        """
        features = tuple(f for f in self.features if f in window.columns)
        p_values: dict[str, float] = {}
        drifted: list[str] = []
        feature_drift = False
        threshold = self.p_val / max(1, len(features)) if self.correction == "bonferroni" else self.p_val
        if features and len(window):
            result = self._tabular_for(features).predict(encode(window, list(features)), drift_type="batch")
            data = result["data"]
            threshold = float(data["threshold"])
            feature_drift = bool(data["is_drift"])
            for name, p in zip(features, data["p_val"], strict=True):
                p_values[name] = float(p)
                if feature_drift and p < threshold:
                    drifted.append(name)
        score_drift = False
        if self._score is not None and scores is not None and len(scores) >= 20:
            data = self._score.predict(np.asarray(scores, dtype=np.float64).reshape(-1, 1))["data"]
            p_values[SCORE] = float(np.ravel(data["p_val"])[0])
            score_drift = bool(data["is_drift"])
            if score_drift:
                drifted.append(SCORE)
        return WindowResult(p_values, drifted, feature_drift, score_drift, threshold, len(window))


def load_reference_file(path: Path) -> pd.DataFrame:
    """A reference sample from a local Parquet file (MODEL_INPUTS + ``score``)."""
    return pd.read_parquet(path)


def champion_reference(tracking_uri: str | None, model_name: str, alias: str) -> tuple[str, pd.DataFrame]:
    """The reference sample of ``models:/<model_name>@<alias>`` (its version's ``reference_uri`` tag).

    Needs ``mlflow-skinny`` (in the drift environment); imported lazily.

    Returns:
        ``(version, reference frame)``.
    """
    import mlflow
    from mlflow.artifacts import download_artifacts

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = client.get_model_version_by_alias(model_name, alias)
    uri = version.tags.get("reference_run_uri") or version.tags.get("reference_uri")
    if not uri:
        raise LookupError(f"{model_name} v{version.version} has no reference_uri tag")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    local = download_artifacts(artifact_uri=uri)
    return str(version.version), pd.read_parquet(local)


def champion_version(tracking_uri: str | None, model_name: str, alias: str) -> str | None:
    """The version the alias points at now (None when unset), for the reload poll."""
    import mlflow

    try:
        return str(
            mlflow.MlflowClient(tracking_uri=tracking_uri)
            .get_model_version_by_alias(model_name, alias)
            .version
        )
    except Exception:
        log.warning("champion lookup failed", exc_info=True)
        return None
