"""Explanations of the fraud network: global permutation importance and per-prediction attributions.

Global: :func:`permutation_importance` shuffles one model input at a time on the holdout and measures the
loss of the business metrics (recall at the alert budget, fraud amount caught), over seeded repeats.

Per prediction: :func:`attributions` runs Captum's Integrated Gradients on the network's dense layers,
whose input is the standardized numeric inputs next to the categorical embeddings. The reference point
is the average transaction: every numeric input at its training mean (0 once standardized) and every
categorical field at the mean of its vocabulary's embeddings. The attributions of a row sum to its logit
minus the reference's logit (IG's completeness); an embedding's dimensions are summed per field, so each
model input gets one number. :data:`TERMS` names each input in the request's terms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from relearn.features.spec import CATEGORICAL_INPUTS, LABEL, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.model.net import FraudNet, Preprocessor, predict_logits
from relearn.model.stats import weighted_metrics
from relearn.settings import ALERT_BUDGET

IMPORTANCE_METRICS = ("recall_at_budget", "fraud_amount_caught")
IMPORTANCE_ARTIFACT = "explain/permutation_importance.json"
IMPORTANCE_PLOT = "explain/permutation_importance.png"
IG_STEPS = 32

# Each model input in the words of the request it was computed from (what an analyst reads).
TERMS: dict[str, str] = {
    "user_txn_count_1h": "the card's transactions in the last hour",
    "user_txn_count_24h": "the card's transactions in the last 24 h",
    "user_txn_count_7d": "the card's transactions in the last 7 days",
    "user_amount_mean_7d": "the card's mean amount over 7 days",
    "user_amount_std_7d": "the card's amount spread over 7 days",
    "user_distinct_merchants_7d": "the card's distinct merchants in 7 days",
    "merchant_txn_count_24h": "the merchant's transactions in the last 24 h",
    "merchant_amount_mean_7d": "the merchant's mean amount over 7 days",
    "merchant_chargeback_rate_30d": "the merchant's chargeback rate over 30 days",
    "log_amount": "amount",
    "amount_zscore_user": "amount against the card's 7-day amounts (z-score)",
    "amount_ratio_user_mean": "amount over the card's 7-day mean",
    "log_seconds_since_last_txn": "seconds since the card's previous transaction",
    "country_changed": "country differs from the card's previous transaction",
    "device_changed": "device differs from the card's previous transaction",
    "is_new_user": "card without history",
    "day_of_week": "day of the week (UTC)",
    "merchant_category": "merchant category",
    "channel": "channel",
    "country": "country",
    "currency": "currency",
    "hour_of_day": "hour of the day (UTC)",
}
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_LOGGED = frozenset({"log_amount", "log_seconds_since_last_txn"})
_FLAGS = frozenset({"country_changed", "device_changed", "is_new_user"})


def request_value(name: str, value: Any) -> Any:
    """A model input's value as the request put it: the amount rather than its log, a weekday's name."""
    if name in CATEGORICAL_INPUTS:
        return str(value)
    value = float(value)
    if name in _LOGGED:
        return round(math.expm1(value), 6)
    if name in _FLAGS:
        return bool(value)
    if name == "day_of_week":
        return _DAYS[int(value) % 7]
    return value


# Global: permutation importance ------------------------------------------------------------------------


def business_metrics(
    scores: np.ndarray, labels: np.ndarray, amounts: np.ndarray, budget: float
) -> dict[str, float]:
    """Recall at the alert budget and fraud amount caught (the gate's rules for ties and budget)."""
    values = weighted_metrics(np.ones((1, len(scores))), scores, labels, amounts, budget)
    return {name: float(values[name][0]) for name in IMPORTANCE_METRICS}


def permutation_importance(
    net: FraudNet,
    preprocessor: Preprocessor,
    frame: pd.DataFrame,
    alert_budget: float = ALERT_BUDGET,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """How much each model input is worth to the business metrics on ``frame`` (the holdout).

    Each input's column is shuffled across rows (its values kept, their link to the rest of the row
    broken), ``repeats`` times with seeded permutations; its importance is the metric lost against the
    unshuffled baseline. An input the model ignores scores exactly 0.

    Args:
        net: The network (scored in eval mode).
        preprocessor: Its fitted preprocessor.
        frame: Rows with ``MODEL_INPUTS``, :data:`~relearn.features.spec.LABEL` and ``amount``.
        alert_budget: Fraction of transactions the review team looks at (the top-scored ones).
        repeats: Shuffles per input (mean and std are over these).
        seed: Seed of the shuffles.

    Returns:
        ``{"baseline": {metric: value}, "importance": {input: {metric: {"mean", "std"}}}, "ranking":
        [inputs by mean recall lost], "term": {input: request term}, "repeats", "seed", "alert_budget",
        "n", "positives"}`` (JSON-ready).
    """
    labels = frame[LABEL].to_numpy(np.int64)
    amounts = frame["amount"].to_numpy(np.float64)
    numeric, categorical = preprocessor.transform(frame[list(MODEL_INPUTS)])

    def metrics(num: torch.Tensor, cat: torch.Tensor) -> dict[str, float]:
        scores = torch.sigmoid(predict_logits(net, num, cat)).double().numpy()
        return business_metrics(scores, labels, amounts, alert_budget)

    baseline = metrics(numeric, categorical)
    rng = np.random.default_rng(seed)
    importance: dict[str, dict[str, dict[str, float]]] = {}
    for name in MODEL_INPUTS:
        is_numeric = name in NUMERIC_INPUTS
        column = list(NUMERIC_INPUTS).index(name) if is_numeric else list(CATEGORICAL_INPUTS).index(name)
        lost: dict[str, list[float]] = {m: [] for m in IMPORTANCE_METRICS}
        for _ in range(repeats):
            order = torch.from_numpy(rng.permutation(len(frame)))
            num, cat = numeric.clone(), categorical.clone()
            target = num if is_numeric else cat
            target[:, column] = target[order, column]
            for metric, value in metrics(num, cat).items():
                lost[metric].append(baseline[metric] - value)
        importance[name] = {
            m: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if repeats > 1 else 0.0}
            for m, v in lost.items()
        }
    ranking = sorted(MODEL_INPUTS, key=lambda n: -importance[n]["recall_at_budget"]["mean"])
    return {
        "baseline": baseline,
        "importance": importance,
        "ranking": ranking,
        "term": {name: TERMS[name] for name in MODEL_INPUTS},
        "repeats": repeats,
        "seed": seed,
        "alert_budget": alert_budget,
        "n": len(frame),
        "positives": int(labels.sum()),
    }


def importance_means(result: Mapping[str, Any], metric: str = "recall_at_budget") -> dict[str, float]:
    """``{input: mean metric lost}`` of a :func:`permutation_importance` result (for the drift report)."""
    return {name: float(v[metric]["mean"]) for name, v in result["importance"].items()}


def plot_importance(result: Mapping[str, Any], metric: str = "recall_at_budget") -> Any:
    """A horizontal bar chart (mean ± std of ``metric`` lost per input), most important on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(reversed(result["ranking"]))
    means = [result["importance"][n][metric]["mean"] for n in names]
    stds = [result["importance"][n][metric]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh(names, means, xerr=stds, color="#4c72b0")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{metric} lost when shuffled (mean ± std of {result['repeats']} repeats)")
    ax.set_title("Permutation importance on the holdout")
    fig.tight_layout()
    return fig


def log_importance(result: Mapping[str, Any]) -> None:
    """Log a :func:`permutation_importance` result to the active MLflow run.

    Metrics ``importance.<input>.<metric>`` (mean), the JSON as :data:`IMPORTANCE_ARTIFACT` and the bar
    chart as :data:`IMPORTANCE_PLOT`.
    """
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_metrics(
        {
            f"importance.{name}.{metric}": values[metric]["mean"]
            for name, values in result["importance"].items()
            for metric in IMPORTANCE_METRICS
        }
    )
    mlflow.log_dict(dict(result), IMPORTANCE_ARTIFACT)
    fig = plot_importance(result)
    mlflow.log_figure(fig, IMPORTANCE_PLOT)
    plt.close(fig)


# Per prediction: Integrated Gradients --------------------------------------------------------------------


def _dense_input(net: FraudNet, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
    """The input of the network's dense layers for these rows, taken from its own forward pass."""
    seen: list[torch.Tensor] = []
    hook = net.mlp.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    try:
        predict_logits(net, numeric, categorical)
    finally:
        hook.remove()
    return torch.cat(seen)


def _reference(net: FraudNet) -> torch.Tensor:
    """The average transaction in dense-input space: numeric means (0) and mean embeddings (known values)."""
    parts = [torch.zeros(net.config["n_numeric"])]
    parts += [emb.weight[1:].mean(dim=0).detach() for emb in net.embeddings]  # row 0: unknown value
    return torch.cat(parts).unsqueeze(0)


def _field_slices(net: FraudNet) -> list[slice]:
    """Columns of each model input in the dense input: one per numeric input, an embedding per field."""
    n = net.config["n_numeric"]
    out = [slice(i, i + 1) for i in range(n)]
    for emb in net.embeddings:
        out.append(slice(n, n + emb.embedding_dim))
        n += emb.embedding_dim
    return out


def attributions(
    net: FraudNet, numeric: torch.Tensor, categorical: torch.Tensor, steps: int = IG_STEPS
) -> dict[str, np.ndarray]:
    """Integrated Gradients of the fraud logit for each row, one value per model input.

    Args:
        net: The network.
        numeric: Raw numeric inputs ``[N, 17]`` (float32, NaN allowed: imputed to the mean, so 0 here).
        categorical: Vocabulary indices ``[N, 5]`` (int64).
        steps: Points of the integral (Gauss-Legendre); more is closer, ``delta`` says how close.

    Returns:
        ``attributions`` ``[N, len(MODEL_INPUTS)]`` (logit units, in ``MODEL_INPUTS`` order), ``logit``
        ``[N]``, ``base_logit`` (scalar, the reference's) and ``delta`` ``[N]`` (completeness error:
        logit − base_logit − sum of attributions).
    """
    from captum.attr import IntegratedGradients

    was_training = net.training
    net.eval()
    try:
        dense = _dense_input(net, numeric, categorical)
        reference = _reference(net)

        def head(x: torch.Tensor) -> torch.Tensor:
            return net.mlp(x).squeeze(1)

        ig = IntegratedGradients(head)
        raw, delta = ig.attribute(dense, baselines=reference, n_steps=steps, return_convergence_delta=True)
        with torch.no_grad():
            logit, base = head(dense), head(reference)[0]
    finally:
        if was_training:
            net.train()
    per_input = torch.stack([raw[:, s].sum(dim=1) for s in _field_slices(net)], dim=1)
    return {
        "attributions": per_input.detach().double().numpy(),
        "logit": logit.double().numpy(),
        "base_logit": float(base),
        "delta": delta.detach().double().numpy(),
    }


def explain_rows(
    net: FraudNet, numeric: np.ndarray, codes: np.ndarray, categorical: np.ndarray, top: int | None = None
) -> dict[str, Any]:
    """The served explanation of each row (see :mod:`relearn.serving.explainer_model` for the schema).

    Args:
        net: The network.
        numeric: Raw numeric inputs ``[N, 17]``.
        codes: Vocabulary indices of the categorical inputs ``[N, 5]``.
        categorical: The category strings as sent ``[N, 5]`` (shown as the values).
        top: Keep only the ``top`` inputs by absolute attribution (None: all).
    """
    found = attributions(net, torch.from_numpy(numeric), torch.from_numpy(codes))
    base_logit = found["base_logit"]
    rows = []
    for i in range(len(numeric)):
        values = [*numeric[i].tolist(), *categorical[i].tolist()]
        items = [
            {
                "input": name,
                "term": TERMS[name],
                "value": request_value(name, value),
                "attribution": float(a),
            }
            for name, value, a in zip(MODEL_INPUTS, values, found["attributions"][i], strict=True)
        ]
        items.sort(key=lambda item: -abs(item["attribution"]))
        rows.append(
            {
                "score": _sigmoid(found["logit"][i]),
                "logit": float(found["logit"][i]),
                "base_score": _sigmoid(base_logit),
                "base_logit": base_logit,
                "convergence_delta": float(found["delta"][i]),
                "attributions": items[:top] if top else items,
            }
        )
    return {"rows": rows}


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + math.exp(-float(x))))


__all__ = [
    "TERMS",
    "attributions",
    "explain_rows",
    "importance_means",
    "log_importance",
    "permutation_importance",
    "request_value",
]
