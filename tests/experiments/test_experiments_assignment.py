"""Sticky assignment: the same arm in every process, the configured split, independent salts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from relearn.experiments.assignment import Split, assign, assign_many, bucket

SALT = "exp-19-salt"
SPLIT = Split.of({"champion": 50, "challenger": 30, "other": 20})


def test_same_arm_in_another_process_with_another_hash_seed():
    """A replica or a restart (other process, other PYTHONHASHSEED) assigns every card identically."""
    ids = [f"user_{i}" for i in range(2000)] + list(range(500))
    here = assign_many(ids, SALT, SPLIT).tolist()
    code = (
        "import json,sys; from relearn.experiments.assignment import Split, assign_many;"
        "ids=json.loads(sys.stdin.read());"
        f"print(json.dumps(assign_many(ids, {SALT!r}, Split.of({SPLIT.as_dict()!r})).tolist()))"
    )
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(ids),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(out.stdout) == here
    assert [assign(i, SALT, SPLIT) for i in ids[:50]] == here[:50]


def test_split_proportions_over_100k_cards():
    arms = assign_many((f"card-{i}" for i in range(100_000)), SALT, SPLIT)
    shares = {a: float(np.mean(arms == a)) for a in SPLIT.arms}
    # Binomial sd at n=1e5 is below 0.0016: 0.006 is almost 4 sd.
    for arm, percent in SPLIT.as_dict().items():
        assert shares[arm] == pytest.approx(percent / 100, abs=0.006), shares


def test_different_salts_decorrelate():
    """Two experiments over the same cards: being in one's treatment says nothing about the other's."""
    ids = [f"card-{i}" for i in range(50_000)]
    half = Split.of({"a": 50, "b": 50})
    x = assign_many(ids, "salt-one", half) == "b"
    y = assign_many(ids, "salt-two", half) == "b"
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.02
    assert np.mean(x & y) == pytest.approx(0.25, abs=0.01)
    same = assign_many(ids, "salt-one", half) == "b"
    assert (same == x).all()


def test_bucket_is_uniform():
    counts = np.bincount([bucket(i, SALT) // 1000 for i in range(50_000)], minlength=10)
    assert counts.min() > 4700 and counts.max() < 5300


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"a": 100}, "at least two arms"),
        ({"a": 50, "b": 40}, "sum to 100"),
        ({"a": 50, "b": 60}, "sum to 100"),
        ({"a": 0, "b": 100}, "positive integers"),
        ({"a": 50.5, "b": 49.5}, "positive integers"),
    ],
)
def test_bad_splits_are_refused(split, message):
    with pytest.raises(ValueError, match=message):
        Split.of(split)
