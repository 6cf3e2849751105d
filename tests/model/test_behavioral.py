"""Behavioral tests (relearn.model.behavioral): the suite file, the cases, each kind failing, the gate.

One small simulated world (21 days, 1,500 cards, the generator's default patterns) through the Feast
training set, split by time as the pipeline does; networks trained for a few epochs with fixed seeds.
The planted defect: a challenger whose training set computed the amount-relative features
(``amount_zscore_user``, ``amount_ratio_user_mean``) 100 times too small — the card's history in cents,
the amount in units — evaluated on correct holdout rows, as serving would feed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from relearn.data.generator import GeneratorConfig, generate
from relearn.features import store as fstore
from relearn.features.spec import NUMERIC_INPUTS
from relearn.features.transforms import model_inputs
from relearn.model.behavior.suite import Step, SuiteError, load_suite
from relearn.model.behavioral import cases_from_holdout, perturb, run_suite
from relearn.model.evaluate import baseline, evaluate
from relearn.model.gate import GateParams, behavioral_rule, gate
from relearn.model.net import score
from relearn.model.report import write_report
from relearn.model.train import TrainParams, time_split, train
from relearn.settings import RelearnSettings

BUDGET = 0.01
WORLD = GeneratorConfig(days=21, n_users=1500, seed=1)
AMOUNT_RELATIVE = ["amount_zscore_user", "amount_ratio_user_mean"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    data = generate(WORLD)
    settings = RelearnSettings(home=tmp_path_factory.mktemp("behavioral"))
    fstore.write_feature_tables(data.transactions, data.labels, settings)
    store = fstore.get_store(settings)
    fstore.apply(store, settings)
    rows = fstore.training_set(store, data.transactions, data.labels, WORLD.end + pd.Timedelta(days=60))
    train_df, val_df, test_df = time_split(rows, 0.15, 0.25)
    return {"train": train_df, "val": val_df, "test": test_df}


def _model(train_df: pd.DataFrame, val_df: pd.DataFrame, seed: int = 0) -> Any:
    result = train(train_df, val_df, TrainParams(epochs=8, seed=seed, progress=False))
    return lambda frame: score(result.net, result.preprocessor, frame)


def _assessed(predict: Any, test_df: pd.DataFrame) -> dict[str, Any]:
    metrics = evaluate(predict(test_df), test_df, BUDGET)
    return {"metrics": metrics, "behavioral": run_suite(predict, test_df, metrics["threshold"])}


@pytest.fixture(scope="module")
def normal(world: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return _assessed(_model(world["train"], world["val"]), world["test"])


@pytest.fixture(scope="module")
def defective(world: dict[str, pd.DataFrame]) -> dict[str, Any]:
    def cents(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(**{name: frame[name] / 100 for name in AMOUNT_RELATIVE})

    return _assessed(_model(cents(world["train"]), cents(world["val"])), world["test"])


# --- the suite file ------------------------------------------------------------------------------------
def test_packaged_suite_loads_with_every_kind() -> None:
    suite = load_suite()
    kinds = {t.kind for t in suite.tests}
    assert kinds == {"invariance", "directional", "min_functionality"}
    assert {"ids_renamed", "larger_amount_than_usual", "card_testing_flagged"} <= {
        t.name for t in suite.tests
    }


GOOD = """
  - name: fine
    kind: invariance
    about: ok
    perturb: [{new_ids: [transaction_id]}]
"""


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - {name: amount_up, kind: directional, about: x, perturb: [{scale: {amont: 2}}]}",
         "tests[1] (amount_up).perturb.0: Value error, unknown numeric field 'amont'"),
        ("  - {name: amount_up, kind: directional, about: x, perturb: [{scale: {amount: 2}}]}",
         "tests[1] (amount_up): Value error, `direction` (up or down) is for directional tests"),
        ("  - {name: two, kind: invariance, about: x, perturb: [{set: {amount: 1}, add: {amount: 1}}]}",
         "tests[1] (two).perturb.0: Value error, a perturb step has exactly one key"),
        ("  - {name: w, kind: invariance, about: x, where: {colour: red}, perturb: [{as_text: [amount]}]}",
         "tests[1] (w).where: Value error, unknown filter field 'colour'"),
        ("  - {name: k, kind: sideways, about: x, perturb: [{as_text: [amount]}]}", "tests[1] (k).kind"),
        ("  - {name: fine, kind: invariance, about: x, perturb: [{as_text: [amount]}]}",
         "test names must be unique: fine"),
    ],
)  # fmt: skip
def test_a_malformed_suite_names_the_entry(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text("version: 1\ntests:\n" + GOOD + entry + "\n")
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)


# --- cases follow the feature definition ---------------------------------------------------------------
def test_holdout_rows_become_cases_with_their_own_inputs(world: dict[str, pd.DataFrame]) -> None:
    test_df = world["test"]
    case, inputs = cases_from_holdout(test_df)
    assert len(case) >= 0.99 * len(test_df)
    again = model_inputs(case)
    kept = test_df.set_index("transaction_id").loc[case["transaction_id"]]
    np.testing.assert_allclose(again[list(NUMERIC_INPUTS)], kept[list(NUMERIC_INPUTS)], rtol=1e-4, atol=1e-4)
    assert (inputs["country"].to_numpy() == kept["country"].to_numpy()).all()


def test_perturbations_move_the_inputs_as_the_feature_code_does(world: dict[str, pd.DataFrame]) -> None:
    case, inputs = cases_from_holdout(world["test"])
    known = case[inputs["user_txn_count_7d"].to_numpy() >= 2].head(50).reset_index(drop=True)
    rng = np.random.default_rng(0)
    tripled = model_inputs(perturb(known, [Step(scale={"amount": 3.0})], rng))
    expected = model_inputs(known.assign(amount=known["amount"] * 3))  # the transform itself
    pd.testing.assert_frame_equal(tripled, expected)
    assert (tripled["amount_ratio_user_mean"] > model_inputs(known)["amount_ratio_user_mean"]).mean() > 0.9
    formatted = perturb(known, [Step(utc_offset="-03:30"), Step(as_text=["amount"])], rng)
    assert formatted["event_timestamp"].str.endswith("-03:30").all()
    pd.testing.assert_frame_equal(model_inputs(formatted), model_inputs(known))
    burst = model_inputs(perturb(known, [Step(recent_transactions={"count": 3, "seconds_ago": 60})], rng))
    before = model_inputs(known)
    assert (burst["user_txn_count_1h"] == before["user_txn_count_1h"] + 3).all()
    assert (burst["user_txn_count_7d"] == before["user_txn_count_7d"] + 3).all()
    assert burst["log_seconds_since_last_txn"].max() <= np.log1p(60) + 1e-6
    np.testing.assert_allclose(burst["user_amount_mean_7d"], before["user_amount_mean_7d"], rtol=1e-6)


# --- each kind can fail --------------------------------------------------------------------------------
def _failure_rates(predict: Any, world: dict[str, pd.DataFrame], threshold: float = 0.5) -> dict[str, float]:
    results = run_suite(predict, world["test"], threshold)
    return {name: test["failure_rate"] for name, test in results["tests"].items()}


def test_each_kind_of_test_can_fail(world: dict[str, pd.DataFrame]) -> None:
    def logistic(x: Any) -> np.ndarray:
        return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))

    reads_ids = _failure_rates(lambda f: logistic(f["transaction_id"].map(hash) % 7), world)
    assert reads_ids["ids_renamed"] > 0.5 and reads_ids["formatting"] == 0.0
    reads_label = _failure_rates(lambda f: 0.1 + 0.5 * f["label"], world)
    assert reads_label["ground_truth_ignored"] == 1.0 and reads_label["larger_amount_than_usual"] == 0.0
    reads_text = _failure_rates(lambda f: logistic(f["amount"].map(lambda a: isinstance(a, str))), world)
    assert reads_text["formatting"] == 1.0
    small_is_risky = _failure_rates(lambda f: logistic(-f["amount_ratio_user_mean"]), world)
    assert small_is_risky["larger_amount_than_usual"] > 0.9
    assert (
        _failure_rates(lambda f: logistic(-f["user_txn_count_1h"]), world)["more_transactions_last_hour"]
        > 0.9
    )
    assert _failure_rates(lambda f: logistic(-f["country_changed"]), world)["new_country"] > 0.9
    never = _failure_rates(lambda f: np.zeros(len(f)), world)
    assert never["account_takeover_flagged"] == never["card_testing_flagged"] == 1.0
    assert never["ordinary_purchase_not_flagged"] == 0.0
    always = _failure_rates(lambda f: np.ones(len(f)), world)
    assert always["ordinary_purchase_not_flagged"] == 1.0 and always["card_testing_flagged"] == 0.0


# --- the gate ------------------------------------------------------------------------------------------
def test_a_planted_defect_passes_the_aggregate_gate_but_not_the_behavioral_one(
    world: dict[str, pd.DataFrame], normal: dict[str, Any], defective: dict[str, Any], tmp_path: Path
) -> None:
    """The first model of a deployment is gated against the baseline: the defect beats it too."""
    base = evaluate(baseline(world["train"], world["test"]), world["test"], BUDGET)
    figures = {}
    for name, model in (("normal", normal), ("defective", defective)):
        aggregate = gate(model["metrics"], None, GateParams(), baseline_metrics=base)
        full = gate(
            model["metrics"], None, GateParams(), baseline_metrics=base, behavioral=model["behavioral"]
        )
        rates = {t: r["failure_rate"] for t, r in model["behavioral"]["tests"].items()}
        figures[name] = (model["metrics"]["recall_at_budget"], aggregate.passed, full.passed, rates)
        recall = model["metrics"]["recall_at_budget"]
        verdicts = f"aggregate gate {aggregate.passed}, with behavior {full.passed}"
        print(f"{name}: recall at budget {recall:.3f} (baseline {base['recall_at_budget']:.3f}); {verdicts}; "
              f"failure rates {rates}\n  {full.reason}")  # fmt: skip
        assert aggregate.passed, aggregate.reason
    assert figures["normal"][2], "a model trained on correct features passes the behavioral suite"
    assert not figures["defective"][2]
    failed, _ = behavioral_rule(defective["behavioral"], GateParams())
    assert any(why.startswith("larger_amount_than_usual failed") for why in failed), failed
    assert any(why.startswith("card_testing_flagged failed") for why in failed), failed
    # the report lists the failing cases, readably
    path = write_report(tmp_path, defective["metrics"], {}, {}, behavioral=defective["behavioral"])
    case = defective["behavioral"]["tests"]["larger_amount_than_usual"]["failing"][0]
    page = path.read_text()
    assert "Behavioral tests" in page and case["transaction_id"] in page and "amount_zscore_user" in page


def test_gate_reads_each_tests_limit_and_an_empty_test_as_unknown() -> None:
    def test(rate: float | None, limit: float | None, cases: int = 100) -> dict[str, Any]:
        failing = [{"transaction_id": "t1", "changed": "amount 1 -> 3", "score": 0.2, "perturbed_score": 0.1}]
        return {
            "failure_rate": rate,
            "max_failure_rate": limit,
            "cases": cases,
            "failing": failing if rate else [],
        }

    results = {"tests": {"a": test(0.04, None), "b": test(0.2, 0.25), "c": test(None, None, 0)}}
    metrics = {"recall_at_budget": 0.5}
    ok = gate(metrics, None, GateParams(), baseline_metrics=metrics, behavioral=results)
    assert ok.passed and "2 behavioral tests passed" in ok.reason and "(unknown): c" in ok.reason
    assert (
        ok.tags()["gate.behavioral.c.passed"] == "unknown" and ok.tags()["gate.behavioral.a.passed"] is True
    )
    strict = gate(metrics, None, GateParams(max_behavioral_failure_rate=0.01), baseline_metrics=metrics,
                  behavioral=results)  # fmt: skip
    assert not strict.passed
    assert strict.reason.startswith("behavioral tests failed: a failed 4.0% of 100 cases (max 1%), e.g. t1:")
    assert "(metrics gate passed: no champion" in strict.reason
