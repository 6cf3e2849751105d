"""Training/serving skew monitoring (relearn.monitoring.skew) on a replayed stream.

Served vectors come from the real serving path: the streaming entity state (SQLite backend) replayed in
event-time order with the chargebacks as they are received, ``model_inputs`` on its features, and the
predictor's v2 request body (FP32 ``numeric``, BYTES ``categorical`` and ``transaction_id``) with the
payload logger's CloudEvent headers, stored by the detector's own log (or posted to a detector process).
The lake lags behind serving by the newest transactions, which must come out as unmatched.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import Server
from relearn.data import io
from relearn.events import REQUEST_TYPE, binary_headers
from relearn.features.spec import CATEGORICAL_INPUTS, MODEL_INPUTS, NUMERIC_INPUTS
from relearn.features.state import StateSettings, open_state
from relearn.features.transforms import model_inputs
from relearn.features.windows import HOUR_US, WINDOWS
from relearn.monitoring import skew, store
from relearn.monitoring.payloads import Event
from relearn.serving import tensors
from support.parity import chargeback_stream, events, small_world

SERVED = 900  # newest transactions whose requests are in the log
NOT_IN_LAKE = 12  # the newest of them: the lake has not ingested them yet
SAMPLE = 600


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The transactions, labels and a lake root that lacks the newest ``NOT_IN_LAKE`` transactions.

    One more transaction, of the newest transaction's merchant, lies 40 days before the rest, and its
    chargeback arrives on the first day: it counts in the sample's chargeback rates although the
    transaction is older than any window (the check must find it in the lake).
    """
    transactions, labels = small_world()
    old = transactions.iloc[[-1]].assign(
        transaction_id="tx_old",
        user_id="u_old",
        event_timestamp=transactions["event_timestamp"].min() - pd.Timedelta(days=40),
    )
    received = transactions["event_timestamp"].min() + pd.Timedelta(days=1)
    chargeback = pd.DataFrame(
        {"transaction_id": ["tx_old"], "chargeback_timestamp": [received], "is_fraud": [True]}
    )
    labels = pd.concat([labels, chargeback], ignore_index=True)
    transactions = pd.concat([old, transactions]).sort_values("event_timestamp", kind="stable")
    transactions = transactions.reset_index(drop=True)
    lake = tmp_path_factory.mktemp("lake")
    io.write_partitioned(transactions.iloc[:-NOT_IN_LAKE], lake, "transactions")
    io.write_partitioned(labels, lake, "labels")
    return transactions, labels, lake


def serve(transactions: pd.DataFrame, labels: pd.DataFrame, path: Path) -> pd.DataFrame:
    """What the transformer sends the predictor: model inputs from the streaming state, in event order."""
    state = open_state(StateSettings(backend="sqlite", path=path, lateness_seconds=40 * 86400))
    stream = [(e.time_us, 1, e) for e in events(transactions)]
    stream += [(c[2], 0, c) for c in chargeback_stream(transactions, labels)]
    features = {}
    try:
        for _, kind, item in sorted(stream, key=lambda x: (x[0], x[1])):
            if kind:
                features[item.transaction_id] = state.observe([item])[0]
            else:
                state.add_chargebacks([item])
    finally:
        state.close()
    entity = pd.DataFrame([features[t] for t in transactions["transaction_id"]], index=transactions.index)
    inputs = model_inputs(pd.concat([transactions, entity], axis=1))
    return inputs.assign(transaction_id=transactions["transaction_id"].to_numpy())


def predictor_events(served: pd.DataFrame, prefix: str = "r") -> list[tuple[dict, bytes]]:
    """The predictor's request events (batches of 1-3 rows), as its payload logger posts them."""
    out, start, n = [], 0, 0
    while start < len(served):
        batch = served.iloc[start : start + 1 + n % 3]
        start, n = start + len(batch), n + 1
        numeric = batch[list(NUMERIC_INPUTS)].to_numpy(np.float32)
        categorical = batch[list(CATEGORICAL_INPUTS)].to_numpy(dtype=object)
        ids = batch["transaction_id"].to_numpy(dtype=object)
        body = tensors.v2_json(
            [
                (tensors.NUMERIC, "FP32", list(numeric.shape), numeric),
                (tensors.CATEGORICAL, "BYTES", list(categorical.shape), categorical),
                (tensors.TRANSACTION_ID, "BYTES", [len(ids)], ids),
            ],
            f"{prefix}-{n - 1}",
        )
        headers = binary_headers(
            event_id=f"{prefix}-{n - 1}",
            event_type=REQUEST_TYPE,
            source="http://relearn-fraud-predictor/",
            inference_service="relearn-fraud",
            namespace="relearn",
            component="predictor",
        )
        out.append((headers, json.dumps(body, separators=(",", ":"), allow_nan=False).encode()))
    return out


def post(url: str, headers: dict, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def write_log(path: Path, items: list[tuple[dict, bytes]]) -> None:
    """Append events with the detector's own group-committing log."""

    async def append() -> None:
        log = store.EventLog(path)
        try:
            for headers, body in items:
                await log.append(
                    Event(headers["ce-id"], headers["ce-type"], "stable", headers["ce-time"], body)
                )
        finally:
            log.close()

    asyncio.run(append())


@pytest.fixture(scope="module")
def clean(world, tmp_path_factory):
    transactions, labels, _ = world
    tmp = tmp_path_factory.mktemp("clean")
    return serve(transactions, labels, tmp / "state.db").iloc[-SERVED:]


@pytest.fixture(scope="module")
def one_sided(world, tmp_path_factory):
    """Served by a transformer whose user_txn_count_1h counts two hours (the offline side unchanged).

    The shared definition is changed in place while serving only, as a transformer image built from a
    changed ``relearn.features.windows`` would have it (its state and its ``model_inputs`` both).
    """
    transactions, labels, _ = world
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(WINDOWS, "user_txn_count_1h", 2 * HOUR_US)
        served = serve(transactions, labels, tmp_path_factory.mktemp("skewed") / "state.db")
    return served.iloc[-SERVED:]


def log_of(tmp_path: Path, served: pd.DataFrame) -> Path:
    path = tmp_path / "inference-log.sqlite3"
    write_log(path, predictor_events(served))
    return path


def test_clean_replay_has_no_skew(world, clean, tmp_path):
    _, _, lake = world
    result = skew.check(log_of(tmp_path, clean), lake, sample=SAMPLE)
    assert (result.rows, result.unmatched, result.unreadable) == (SAMPLE - NOT_IN_LAKE, NOT_IN_LAKE, 0)
    assert result.skewed() == [], skew.format_table(result)
    assert set(result.ratios) == set(MODEL_INPUTS) and set(result.ratios.values()) == {0.0}
    # Not a vacuous pass: the sample has history, chargebacks and travel in it.
    sample = clean.iloc[-SAMPLE:]
    assert (sample["user_txn_count_1h"] > 0).sum() > 50
    assert (sample["merchant_chargeback_rate_30d"] > 0).sum() > 20
    assert sample["country_changed"].sum() > 0


def test_a_definition_changed_on_one_side_is_caught(world, one_sided, tmp_path):
    _, _, lake = world
    result = skew.check(log_of(tmp_path, one_sided), lake, sample=SAMPLE)
    assert result.skewed() == ["user_txn_count_1h"], skew.format_table(result)
    assert 0 < result.ratios["user_txn_count_1h"] < 0.5
    assert result.max_abs_difference["user_txn_count_1h"] >= 1.0  # a count off by at least one
    tid, served, offline = result.examples["user_txn_count_1h"]
    assert served > offline and tid in set(one_sided["transaction_id"])


def test_categorical_and_float32_noise(world, clean):
    """A changed categorical counts; a float32 rounding step does not; unknown ids are unmatched."""
    _, _, lake = world
    served = clean.iloc[-SAMPLE:].reset_index(drop=True)
    offline = skew.offline_inputs(list(served["transaction_id"]), lake, lake)
    noisy = served.copy()
    noisy["amount_zscore_user"] = np.nextafter(
        noisy["amount_zscore_user"].to_numpy(np.float32), np.float32(99)
    )
    noisy.loc[:4, "channel"] = "elsewhere"
    noisy.loc[5, "transaction_id"] = "never-seen"
    result = skew.compare(noisy, offline)
    assert result.skewed() == ["channel"]
    assert result.mismatched["channel"] == 5 and result.unmatched == NOT_IN_LAKE + 1
    assert 0 < result.max_abs_difference["amount_zscore_user"] < 1e-5


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "relearn.monitoring.skew", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_cli_exit_codes_table_json_and_log_line(world, clean, one_sided, tmp_path):
    _, _, lake = world
    common = ["--transactions", str(lake), "--labels", str(lake), "--sample", str(SAMPLE)]
    ok = run_cli("--log", str(log_of(tmp_path / "a", clean)), *common)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "user_txn_count_1h" in ok.stdout and f"{SAMPLE - NOT_IN_LAKE} rows compared" in ok.stdout
    line = json.loads(ok.stderr.strip().splitlines()[-1])
    assert line["message"] == "feature skew checked" and line["skewed_features"] == []

    bad = run_cli("--log", str(log_of(tmp_path / "b", one_sided)), *common, "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    out = json.loads(bad.stdout)
    assert [f for f, r in out["ratios"].items() if r] == ["user_txn_count_1h"]
    assert out["unmatched"] == NOT_IN_LAKE

    tolerated = run_cli("--log", str(tmp_path / "b" / "inference-log.sqlite3"), *common, "--max-ratio", "0.5")
    assert tolerated.returncode == 0, tolerated.stdout
    empty = tmp_path / "lake-without-them"
    assert (
        run_cli(
            "--log", str(tmp_path / "a" / "inference-log.sqlite3"), "--transactions", str(empty)
        ).returncode
        == 2
    )
    assert run_cli("--help").returncode == 0


def test_a_lake_that_is_not_there_is_an_error_not_zero_skew(clean, tmp_path):
    """A wrong mount or path must not read as "nothing skewed": the detector's job counts it as an error."""
    with pytest.raises(FileNotFoundError, match="no day partitions"):
        skew.check(log_of(tmp_path, clean), tmp_path / "not-a-lake", sample=SAMPLE)


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("relearn_feature_skew")
    }


def test_the_detector_checks_periodically_and_exports_gauges(world, one_sided, tmp_path):
    """A detector process with the skew job on: served events posted to its sink, gauges on /metrics."""
    _, _, lake = world
    reference = tmp_path / "reference.parquet"
    one_sided[list(MODEL_INPUTS)].assign(score=0.01).to_parquet(reference, index=False)
    server = Server(
        tmp_path / "data",
        reference,
        skew_lake_dir=str(lake),
        skew_interval_seconds="0.5",
        skew_sample=str(SAMPLE),
    )
    try:
        server.wait_ready()
        assert {post(server.url, headers, body) for headers, body in predictor_events(one_sided)} == {202}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = scrape(server.url)
            if metrics.get('relearn_feature_skew_rows{track="stable"}') == SAMPLE - NOT_IN_LAKE:
                break
            time.sleep(0.2)
    finally:
        server.stop()
    assert metrics['relearn_feature_skew_unmatched_rows{track="stable"}'] == NOT_IN_LAKE
    ratios = {
        key.split('feature="')[1].split('"')[0]: value
        for key, value in metrics.items()
        if key.startswith("relearn_feature_skew_ratio{")
    }
    assert set(ratios) == set(MODEL_INPUTS)
    assert {f for f, r in ratios.items() if r > 0} == {"user_txn_count_1h"}
    assert metrics['relearn_feature_skew_max_abs_difference{feature="user_txn_count_1h",track="stable"}'] >= 1
    assert metrics['relearn_feature_skew_last_check_timestamp_seconds{track="stable"}'] > time.time() - 60
    assert metrics["relearn_feature_skew_check_errors_total"] == 0
