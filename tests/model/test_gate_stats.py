"""The statistical gate: the paired bootstrap's numbers, the gate's rule, and its error rates over seeds.

Hundreds of seeds of trained networks would take an hour, so the error rates are measured on a cheap model
of scores (real networks: ``tests/model/test_model.py``). A holdout row has a latent risk ``u ~ N(2.5 y, 1)``
(``y``: fraud, 3 % of 10,000 rows: 300 frauds, 2 % reviewed) and a model scores ``u + sigma * e`` with its
own error ``e`` per row. Two models trained alike share ``sigma`` up to a seed-to-seed spread
(``SEED_SPREAD``: their population recall at budget then varies about as much as the networks of
:mod:`relearn.model.train` do across seeds); a better model has a smaller ``sigma``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from relearn.model.evaluate import evaluate, paired
from relearn.model.gate import GateParams, gate, paired_rule
from relearn.model.stats import bounds, paired_bootstrap, resample_counts, summary, weighted_metrics

ROWS, FRAUD_RATE, BUDGET = 10_000, 0.03, 0.02
SIGMA = 1.0  # the champion's error
SEED_SPREAD = 0.06  # log-sd of sigma across training seeds: +-0.014 population recall at budget
BETTER_SIGMA = 0.6  # a challenger truly better by MARGIN (see test_stated_margin)
MARGIN = 0.095  # population recall at budget: 0.304 -> 0.400
SEEDS = range(150)
N_BOOT = 400


def holdout(rng: np.random.Generator, n: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Labels and latent risks of ``n`` holdout rows."""
    y = (rng.random(n) < FRAUD_RATE).astype(np.int64)
    return y, rng.normal(0.0, 1.0, n) + 2.5 * y


def scores(rng: np.random.Generator, risk: np.ndarray, sigma: float) -> np.ndarray:
    return risk + sigma * rng.normal(0.0, 1.0, len(risk))


def population_recall(sigma: float, n: int = 2_000_000) -> float:
    rng = np.random.default_rng(0)
    y, risk = holdout(rng, n)
    s = scores(rng, risk, sigma)
    k = int(BUDGET * n)
    return float(y[np.argpartition(-s, k)[:k]].sum() / y.sum())


def promotion_rate(challenger_sigma: float, params: GateParams) -> float:
    """Share of seeds where the gate promotes a challenger over a champion (each trained with its seed)."""
    promoted = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        y, risk = holdout(rng)
        spread = np.exp(SEED_SPREAD * rng.normal(size=2))
        champion = scores(rng, risk, SIGMA * spread[0])
        challenger = scores(rng, risk, challenger_sigma * spread[1])
        boot = paired_bootstrap(challenger, champion, y, budget=BUDGET, n_boot=N_BOOT, seed=seed)
        promoted += not paired_rule(boot, params)[0]
    return promoted / len(SEEDS)


def test_stated_margin() -> None:
    """The challenger of the power test is truly better by MARGIN; a seed's spread is ~0.014."""
    base, better = population_recall(SIGMA), population_recall(BETTER_SIGMA)
    assert better - base == pytest.approx(MARGIN, abs=0.01), (base, better)
    spread = population_recall(SIGMA * np.exp(SEED_SPREAD)) - base
    assert -0.02 < spread < -0.01, spread


def test_models_trained_alike_are_promoted_in_at_most_5_percent() -> None:
    rate = promotion_rate(SIGMA, GateParams(n_boot=N_BOOT))  # one-sided 97.5 %, no minimum effect
    print(f"false promotions: {rate:.1%} of {len(SEEDS)} seeds")
    assert rate <= 0.05  # one-sided 95 % gave 6.0 %: the seeds' true differences add to the holdout's noise


def test_a_challenger_better_by_the_margin_is_promoted_in_80_percent() -> None:
    rate = promotion_rate(BETTER_SIGMA, GateParams(n_boot=N_BOOT))
    print(f"power at +{MARGIN} recall at budget: {rate:.1%} of {len(SEEDS)} seeds")
    assert rate >= 0.80


# --- the numbers --------------------------------------------------------------------------------------
def _frame(y: np.ndarray, amount: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"label": y, "amount": amount, "merchant_category": "grocery", "is_new_user": 0.0})


def test_unit_counts_give_what_evaluate_reports_and_counts_act_as_weights() -> None:
    rng = np.random.default_rng(3)
    y, risk = holdout(rng, 4000)
    s = np.round(1 / (1 + np.exp(3 - scores(rng, risk, SIGMA))), 2)  # probabilities, many ties
    amount = rng.lognormal(3, 1, len(y))
    reported = evaluate(s, _frame(y, amount), BUDGET)
    ones = weighted_metrics(np.ones((1, len(y)), np.int64), s, y, amount, BUDGET)
    for name in ("recall_at_budget", "pr_auc", "fraud_amount_caught"):
        assert ones[name][0] == pytest.approx(reported[name], abs=1e-12), name
    counts = next(resample_counts(len(y), 3, np.random.default_rng(0)))
    weighted = weighted_metrics(counts, s, y, amount, BUDGET)
    for b in range(3):
        rows = np.repeat(np.arange(len(y)), counts[b])
        again = evaluate(s[rows], _frame(y[rows], amount[rows]), BUDGET)
        assert weighted["recall_at_budget"][b] == pytest.approx(again["recall_at_budget"], abs=1e-12)
        assert weighted["fraud_amount_caught"][b] == pytest.approx(again["fraud_amount_caught"], abs=1e-12)
        ap = average_precision_score(y, s, sample_weight=counts[b])
        assert weighted["pr_auc"][b] == pytest.approx(ap, abs=1e-12)


def test_bootstrap_is_paired_and_seeded() -> None:
    rng = np.random.default_rng(4)
    y, risk = holdout(rng, 3000)
    a, b = scores(rng, risk, SIGMA), scores(rng, risk, SIGMA)
    same = paired_bootstrap(a, a, y, budget=BUDGET, n_boot=200)
    assert all(set(row["draws"]) == {0.0} for row in same["metrics"].values()), "a model vs itself: 0"
    first, again = (paired_bootstrap(a, b, y, budget=BUDGET, n_boot=200, seed=9) for _ in range(2))
    assert first == again
    other = paired_bootstrap(a, b, y, budget=BUDGET, n_boot=200, seed=10)
    assert other["metrics"]["pr_auc"]["draws"] != first["metrics"]["pr_auc"]["draws"]
    lower, upper = bounds(first["metrics"]["pr_auc"]["draws"], 0.95)
    assert lower < first["metrics"]["pr_auc"]["difference"] < upper
    frame = _frame(y, np.ones(len(y)))
    assert paired(a, b, frame, BUDGET, n_boot=200, seed=9)["metrics"] == first["metrics"]


def _boot(primary: list[float], guarded: list[float]) -> dict:
    rows = {"recall_at_budget": primary, "pr_auc": guarded, "fraud_amount_caught": [-0.5, 0.5]}
    metrics = {k: {"candidate": 0.5, "champion": 0.5, "difference": float(np.mean(d)), "draws": d}
               for k, d in rows.items()}  # fmt: skip
    return {"n": 1000, "positives": 50, "budget": BUDGET, "n_boot": 100, "seed": 0, "metrics": metrics}


def test_gate_rule_on_the_bounds() -> None:
    params = GateParams(confidence=0.9, non_inferiority_margin=0.02)
    up = list(np.linspace(0.01, 0.05, 101))  # 10 % quantile 0.014 > 0
    flat = list(np.linspace(-0.01, 0.03, 101))  # 10 % quantile -0.006: not significant
    assert paired_rule(_boot(up, up), params)[0] == []
    failed, rows = paired_rule(_boot(flat, up), params)
    assert "recall_at_budget gain +0.0100 is not significant" in failed[0]
    assert rows["recall_at_budget"]["lower"] == pytest.approx(-0.006)
    assert rows["fraud_amount_caught"]["role"] == "reported", "not gated by default"
    worse = list(np.linspace(-0.06, 0.0, 101))  # pr_auc lower bound -0.054 < -0.02
    (why,) = paired_rule(_boot(up, worse), params)[0]
    assert why.startswith("pr_auc may be worse") and "non-inferiority margin" in why
    # the same draws pass as non-inferiority when a loss is tolerated
    assert paired_rule(_boot(flat, up), params.model_copy(update={"min_improvement": -0.01}))[0] == []
    # what the report and the version tags show
    assert summary(_boot(up, up), 0.9)["recall_at_budget"]["upper"] == pytest.approx(0.046)


def test_gate_with_a_champion_needs_the_paired_comparison() -> None:
    metrics = {"recall_at_budget": 0.5, "pr_auc": 0.4, "slices": {}}
    blind = gate(metrics, metrics, GateParams())
    assert not blind.passed and "no paired comparison" in blind.reason
    up = list(np.linspace(0.01, 0.05, 101))
    ok = gate(metrics, metrics, GateParams(confidence=0.9), paired=_boot(up, up))
    assert ok.passed and "recall_at_budget +0.0300 [+0.0140, +0.0460]" in ok.reason
    tags = ok.tags()
    assert tags["gate.passed"] is True and tags["gate.recall_at_budget.lower"] == pytest.approx(0.014)
    assert tags["gate.rows"] == 1000 and tags["gate.confidence"] == 0.9
