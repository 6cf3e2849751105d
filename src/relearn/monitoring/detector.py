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
LABEL = "is_fraud"  # optional reference column: the labels of the reference sample (prior-shift test)


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
    label_drift: bool = False

    @property
    def is_drift(self) -> bool:
        """Input, score or label (prior) drift."""
        return self.feature_drift or self.score_drift or self.label_drift


def prevalence_p_value(positives: int, n: int, rate: float, dispersion: float = 1.0) -> float:
    """One-sided p-value of ``positives`` or more frauds among ``n`` at the reference ``rate``.

    Exact binomial when ``dispersion`` is 1; otherwise quasi-binomial (normal approximation with the
    variance inflated by ``dispersion``, continuity-corrected): fraud comes in bursts (card testing, a
    takeover's spree), so consecutive events are not independent and the binomial alone is too sure.
    A prior (label) shift that matters for a fraud detector is more fraud (a campaign); the one-sided
    test also keeps labels that have not arrived yet (which only lower the count) from raising alarms.
    """
    from scipy.stats import binomtest, norm

    if n <= 0 or not 0.0 < rate < 1.0:
        return 1.0
    if dispersion <= 1.0:
        return float(binomtest(int(positives), int(n), float(rate), alternative="greater").pvalue)
    z = (positives - n * rate - 0.5) / np.sqrt(dispersion * n * rate * (1.0 - rate))
    return float(norm.sf(z))


def label_dispersion(labels: np.ndarray, n: int, min_chunks: int = 10) -> float:
    """Overdispersion of fraud counts in consecutive chunks of ``n`` reference events (time order), >= 1.

    Chunks are shortened to give at least ``min_chunks`` of them: once a chunk is longer than a fraud
    burst, the dispersion hardly depends on its length.
    """
    y = np.asarray(labels, dtype=np.float64)
    size = int(min(n, len(y) // min_chunks))
    rate = float(y.mean()) if len(y) else 0.0
    if size < 50 or not 0.0 < rate < 1.0:
        return 1.0
    counts = y[: len(y) // size * size].reshape(-1, size).sum(axis=1)
    return max(1.0, float(counts.var(ddof=1)) / (size * rate * (1.0 - rate)))


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
    """Window-versus-reference tests. Build once per reference (alibi-detect's import takes ~10 s).

    Two things keep a stationary stream in time order from being flagged:

    * **Time-of-day matching.** Many inputs follow the clock (seconds since the last transaction, 1 h
      counts, and through them the score), so a window of consecutive events (a few hours) is not a
      sample of a reference spread over whole days. Each window is compared with a reference subsample
      whose ``stratify_by`` (hour of day) mix equals the window's: per hour, ``m`` times the window's
      count of that hour's reference rows, without replacement, ``m = min(max_ratio, smallest reference
      hour / window hour)``. alibi-detect's detectors are cheap to build, so one is built per window.
    * **Excluded inputs** (``exclude``): tested for the report (``p_values``) but not part of the verdict,
      because they are non-stationary by construction (see ``DriftSettings.exclude_features``).
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        p_val: float = 0.05,
        correction: str = "bonferroni",
        exclude: tuple[str, ...] | list[str] = (),
        version: str = "local",
        stratify_by: str | None = "hour_of_day",
        max_ratio: float = 8.0,
        seed: int = 0,
    ) -> None:
        from alibi_detect.cd import KSDrift, TabularDrift

        self.version = version
        self.reference = reference.reset_index(drop=True)
        self.p_val = p_val
        self.correction = correction
        self.max_ratio = max_ratio
        self.seed = seed
        present = [f for f in MODEL_INPUTS if f in reference.columns]
        self.features = [f for f in present if f not in set(exclude)]
        self.monitored = [f for f in present if f in set(exclude) and f != stratify_by]
        self._tabular = TabularDrift
        self._ks = KSDrift
        # The score test is one more member of the family: under Bonferroni each of the n + 1 tests runs
        # at p_val / (n + 1), so a window's false-alarm rate stays at most p_val.
        n = len(self.features) + (SCORE in reference)
        self._family = n if correction == "bonferroni" else 1
        self._encoded = encode(self.reference, present)
        self._column = {name: j for j, name in enumerate(present)}
        self._strata: dict[str, np.ndarray] = {}
        self.stratify_by = stratify_by if stratify_by in reference.columns else None
        if self.stratify_by is not None:
            keys = self.reference[self.stratify_by].astype(str).to_numpy()
            self._strata = {k: np.flatnonzero(keys == k) for k in np.unique(keys)}

    def matched_rows(self, window: pd.DataFrame) -> np.ndarray:
        """Reference row indices whose ``stratify_by`` mix matches the window's (all rows if it cannot)."""
        everything = np.arange(len(self.reference))
        if self.stratify_by is None or self.stratify_by not in window.columns or not len(window):
            return everything
        counts = window[self.stratify_by].astype(str).value_counts()
        if any(key not in self._strata for key in counts.index):
            return everything  # an hour the reference never saw: compare with all of it
        ratio = min(self.max_ratio, min(len(self._strata[k]) / int(c) for k, c in counts.items()))
        rng = np.random.default_rng([self.seed, *sorted(int(c) for c in counts.to_numpy())])
        parts = [
            rng.choice(self._strata[k], size=max(1, int(c * ratio)), replace=False)
            for k, c in sorted(counts.items())
        ]
        return np.sort(np.concatenate(parts))

    def _matrix(self, rows: np.ndarray, features: list[str]) -> np.ndarray:
        return self._encoded[np.ix_(rows, [self._column[f] for f in features])]

    def _detector(self, x_ref: np.ndarray, features: list[str], p_val: float) -> Any:
        categorical = {j: None for j, name in enumerate(features) if name in CATEGORICAL_INPUTS}
        return self._tabular(
            x_ref, p_val=p_val, categories_per_feature=categorical, correction=self.correction
        )

    def prevalence_p_value(self, positives: int, n: int) -> float | None:
        """P-value of ``positives`` frauds among ``n`` labelled events against the whole reference's rate.

        None when the reference carries no ``is_fraud`` column (the reference sample's labels). The
        reference must be in time order: its consecutive chunks give the labels' overdispersion.
        """
        if LABEL not in self.reference:
            return None
        labels = pd.to_numeric(self.reference[LABEL], errors="coerce").fillna(0).to_numpy(np.float64)
        return prevalence_p_value(positives, n, float(labels.mean()), label_dispersion(labels, n))

    def test(
        self, window: pd.DataFrame, scores: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> WindowResult:
        """Test one window of inputs (and the scores paired with it, and its labels when known).

        Args:
            window: Rows of features; columns not present are not tested.
            scores: Prediction scores of the window (may be empty).
            labels: Fraud labels of the window's rows, when known (offline, or once chargebacks matured):
                their prevalence is tested against the hour-matched reference's (one-sided binomial,
                quasi-binomial with the reference's burstiness),
                which shows a prior (label) shift the inputs and the score barely reflect.

        Returns:
            The window's p-values (tested and excluded inputs) and verdict. Feature drift uses the
            corrected threshold; score drift and the label test are members of the Bonferroni family.
        """
        features = [f for f in self.features if f in window.columns]
        monitored = [f for f in self.monitored if f in window.columns]
        rows = self.matched_rows(window)
        p_values: dict[str, float] = {}
        drifted: list[str] = []
        feature_drift = False
        with_labels = labels is not None and LABEL in self.reference and len(labels) > 0
        family = self._family + (with_labels and self.correction == "bonferroni")
        threshold = self.p_val / max(1, family) if self.correction == "bonferroni" else self.p_val
        if features and len(window):
            p_tab = self.p_val * len(features) / max(len(features), family)
            detector = self._detector(self._matrix(rows, features), features, p_tab)
            data = detector.predict(encode(window, features), drift_type="batch")["data"]
            threshold = float(data["threshold"])
            feature_drift = bool(data["is_drift"])
            for name, p in zip(features, data["p_val"], strict=True):
                p_values[name] = float(p)
                if feature_drift and p < threshold:
                    drifted.append(name)
        if monitored and len(window):  # reported only: not part of the verdict
            detector = self._detector(self._matrix(rows, monitored), monitored, self.p_val)
            data = detector.predict(encode(window, monitored), drift_type="batch")["data"]
            p_values.update({name: float(p) for name, p in zip(monitored, data["p_val"], strict=True)})
        score_drift = label_drift = False
        if SCORE in self.reference and scores is not None and len(scores) >= 20:
            x_ref = self.reference[SCORE].to_numpy(np.float64)[rows]
            detector = self._ks(x_ref, p_val=self.p_val / family)
            data = detector.predict(np.asarray(scores, dtype=np.float64).reshape(-1, 1))["data"]
            p_values[SCORE] = float(np.ravel(data["p_val"])[0])
            score_drift = bool(data["is_drift"])
            if score_drift:
                drifted.append(SCORE)
        if with_labels:
            assert labels is not None
            y = np.asarray(labels, dtype=np.float64)
            reference_labels = pd.to_numeric(self.reference[LABEL], errors="coerce").fillna(0).to_numpy()
            rate = float(reference_labels[rows].mean())
            dispersion = label_dispersion(reference_labels, len(y))
            p_values[LABEL] = prevalence_p_value(int(y.sum()), len(y), rate, dispersion)
            if p_values[LABEL] < self.p_val / family:
                label_drift = True
                drifted.append(LABEL)
        extra = {"reference_rows": len(rows), "excluded": monitored}
        return WindowResult(
            p_values, drifted, feature_drift, score_drift, threshold, len(window), extra, label_drift
        )


def load_reference_file(path: Path) -> pd.DataFrame:
    """A reference sample from a local Parquet file (MODEL_INPUTS + ``score``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no reference sample at {path}: `make train` copies the champion's there; else set "
            "--reference-path, or --mlflow-tracking-uri with an MLflow server"
        )
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
