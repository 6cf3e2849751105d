"""The bandit on real traffic: arm shares recomputed from the joined history, written to the store.

``kubectl relearn experiment update-bandit NAME --history joined.parquet`` (run periodically; in the cluster
the chart's CronJob runs ``update-bandit --detector URL`` on every running bandit, the history read from the
drift detector by :func:`detector_history`) reads the same predictions joined with chargebacks that
``analyze`` reads, counts per arm the frauds caught and missed at the arm's own alert budget among the rows
whose labels matured (``label_maturity_days`` after the transaction: never earlier, so arms whose frauds are
charged back first are not favoured), and sets each arm's share to its posterior probability of being the best
(Thompson sampling, :func:`relearn.experiments.bandit.prob_best`) with the floor ``bandit_min_share``. When
the newest matured reward is older than ``bandit_stale_days`` (labels stopped flowing), every card goes to the
control (the champion) until rewards come back. The transformers read the shares from the store and map each
card's salted bucket onto the cumulative shares (:class:`relearn.experiments.assignment.Shares`): a card keeps
its arm while the shares stay, and a change moves only the cards between an old and a new edge.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from relearn.experiments.bandit import prob_best, with_floor
from relearn.experiments.metrics import row_losses
from relearn.experiments.settings import ExperimentSettings
from relearn.features.spec import LABEL

DAY_S = 86400.0
MIN_ARMS = 3  # the bandit mode: k >= 3 versions (two arms are an A/B experiment)
DRAWS = 20_000  # Monte Carlo draws of P(best): share noise below 0.4 %


def bandit_params(arms: int, settings: ExperimentSettings) -> dict[str, float]:
    """The bandit part of a new record (floor, maturity, staleness); refuses fewer than three arms.

    Raises:
        ValueError: naming the setting at fault (``--arm`` count or RELEARN_EXPERIMENT_BANDIT_MIN_SHARE).
    """
    if arms < MIN_ARMS:
        raise ValueError(
            f"a bandit routes between k >= {MIN_ARMS} versions, got {arms} (give --arm {MIN_ARMS}+ times; "
            "two versions are an A/B experiment: leave out --mode bandit)"
        )
    if arms * settings.bandit_min_share >= 1:
        raise ValueError(
            f"RELEARN_EXPERIMENT_BANDIT_MIN_SHARE={settings.bandit_min_share} times {arms} arms leaves "
            "nothing to learn with"
        )
    return {
        "min_share": settings.bandit_min_share,
        "maturity_s": settings.label_maturity_days * DAY_S,
        "stale_s": settings.bandit_stale_days * DAY_S,
    }


def equal_percents(arms: list[str]) -> dict[str, int]:
    """Integer percents summing to 100, as equal as they go (the bandit's starting split)."""
    base, extra = divmod(100, len(arms))
    return {a: base + (i < extra) for i, a in enumerate(arms)}


def rewards(
    frame: pd.DataFrame, arms: list[str], now: float, maturity_s: float, settings: ExperimentSettings
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Per arm, matured frauds caught and missed at the arm's budget; when the newest one matured.

    Each arm's budget threshold is taken over all of its traffic up to ``now`` (the review queue's);
    only the frauds whose transaction is ``maturity_s`` old count. ``frame``: joined predictions (arm,
    user_id, score, label, amount, time in epoch seconds).
    """
    seen = frame[(frame["time"] <= now) & frame["arm"].astype(str).isin(arms)]
    caught, missed, newest = np.zeros(len(arms)), np.zeros(len(arms)), -math.inf
    for i, arm in enumerate(arms):
        rows = seen[seen["arm"].astype(str) == arm]
        if rows.empty:
            continue
        _, flagged = row_losses(rows, settings)
        fraud = rows[LABEL].to_numpy().astype(bool)
        matured = rows["time"].to_numpy(np.float64) + maturity_s <= now
        caught[i] = np.sum(fraud & matured & flagged)
        missed[i] = np.sum(fraud & matured & ~flagged)
        if (fraud & matured).any():
            newest = max(newest, float(rows["time"].to_numpy(np.float64)[fraud & matured].max()))
    return caught, missed, (newest + maturity_s if newest > -math.inf else None)


def detector_history(url: str, since: float, timeout: float = 30.0) -> pd.DataFrame:
    """The joined history from the drift detector's ``GET /v1/experiments/rewards`` (the cluster's source).

    Every live prediction scored since ``since`` with its model version (the arm), score, event time and
    label (1 once its chargeback came in), read page by page. ``amount`` is 0: the bandit's reward is a
    fraud caught or missed at the budget, which does not depend on it.
    """
    import httpx

    rows: list[list[Any]] = []
    after, more = 0, True
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
        while more:
            resp = client.get("/v1/experiments/rewards", params={"since": since, "after": after})
            resp.raise_for_status()
            page = resp.json()
            rows += page["rows"]
            after, more = int(page["after"]), bool(page["more"])
    frame = pd.DataFrame(rows, columns=["arm", "score", "time", LABEL])
    return frame.astype({"arm": str, "score": np.float64, "time": np.float64, LABEL: np.int64}).assign(
        amount=0.0
    )


def update(
    record: dict[str, Any],
    frame: pd.DataFrame,
    now: float,
    settings: ExperimentSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """New ``shares`` and ``bandit`` state of a running bandit record (the store writes them).

    Raises:
        ValueError: the record is not a running bandit.
    """
    s = settings or ExperimentSettings()
    if record.get("kind") != "bandit":
        raise ValueError(f"experiment {record['name']!r} is not a bandit (start it with --mode bandit)")
    if record["status"] != "running":
        raise ValueError(f"experiment {record['name']!r} is not running ({record['status']})")
    b, arms, champion = record["bandit"], list(record["split"]), record["control"]
    caught, missed, newest = rewards(frame, arms, now, b["maturity_s"], s)
    # Before any reward matured, the clock starts when the first could have (started + maturity).
    since = newest if newest is not None else record["started"] + b["maturity_s"]
    stale = now - since > b["stale_s"]
    if stale:
        shares = [float(a == champion) for a in arms]
    else:
        p = prob_best(caught, missed, np.random.default_rng(seed), draws=DRAWS)
        shares = with_floor(p, b["min_share"]).tolist()
    return {
        "shares": dict(zip(arms, shares, strict=True)),
        "bandit": {
            **b,
            "caught": dict(zip(arms, caught.tolist(), strict=True)),
            "missed": dict(zip(arms, missed.tolist(), strict=True)),
            "newest_reward": newest,
            "reward_age_s": now - since,
            "fallback": bool(stale),
            "updated": now,
        },
    }


def update_bandits(
    store: Any,
    name: str | None,
    history: pd.DataFrame | None,
    detector: str | None,
    now: float,
    settings: ExperimentSettings,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Update bandit ``name`` (None: every running bandit) from ``history`` or the ``detector``'s URL.

    Returns the records written to ``store`` (an :class:`relearn.experiments.store.ExperimentStore`).
    """
    from relearn.experiments.routing import model_version

    listed = {} if name else {r["name"]: r for r in store.list()}  # one read of the store for all
    running = [n for n, r in listed.items() if r["status"] == "running" and r.get("kind") == "bandit"]
    out = []
    for bandit in [name] if name else running:
        frame = history
        if frame is None:  # the detector names the model version that scored: map it onto the arm names
            record = listed.get(bandit) or store.get(bandit)
            frame = detector_history(str(detector), since=record["started"])
            arms = {model_version(a): a for a in record["split"]}
            frame = frame.assign(arm=frame["arm"].map(arms)).dropna(subset=["arm"])
        out.append(store.set_shares(bandit, lambda r: update(r, frame, now, settings, seed=seed)))  # noqa: B023
    return out


def replay(
    store_path: Any,
    recall: dict[str, float],
    *,
    days: int = 60,
    frauds_per_day: int = 300,
    fraud_rate: float = 0.1,
    cards: int = 50_000,
    seed: int = 0,
    settings: ExperimentSettings | None = None,
) -> dict[str, float]:
    """Regret of the live path on simulated traffic: store, daily ``update``, the transformers' routing.

    Each day's transactions (fraud share ``fraud_rate``, cards drawn from ``cards``) go to the arm the
    running experiment gives their card (:class:`relearn.experiments.routing.RunningExperiment`, as in a
    transformer); an arm catches a fraud (scores it above every legitimate transaction) with its
    ``recall``. After each day the joined history so far is fed to :func:`update` and the shares written
    to the store. Regret: expected frauds missed beyond the best arm's, beside an equal split's.
    """
    from relearn.experiments.routing import RunningExperiment
    from relearn.experiments.store import ExperimentStore

    s = settings or ExperimentSettings(alert_budget=min(0.5, 1.5 * fraud_rate))
    rng = np.random.default_rng(seed)
    arms, best = list(recall), max(recall.values())
    store, serving = ExperimentStore(store_path), RunningExperiment(store_path)
    params = bandit_params(len(arms), s)
    t0 = store.start("replay", equal_percents(arms), control=arms[0], bandit=params)["started"]
    frames, regret, frauds = [], 0.0, 0
    n = int(frauds_per_day / fraud_rate)
    for day in range(days):
        users = rng.integers(0, cards, n).astype(str)
        _, assigned = serving.arms(users)
        p = np.vectorize(recall.get)(assigned)
        fraud = rng.random(n) < fraud_rate
        hit = fraud & (rng.random(n) < p)
        score = np.where(hit, rng.uniform(0.95, 1.0, n), rng.uniform(0.0, 0.9, n))
        times = t0 + (day + np.sort(rng.random(n))) * DAY_S
        frames.append(
            pd.DataFrame(
                {"arm": assigned, "user_id": users, "score": score, LABEL: fraud.astype(int), "time": times}
            ).assign(amount=100.0)
        )
        regret += float(np.sum((best - p)[fraud]))
        frauds += int(fraud.sum())
        joined = pd.concat(frames, ignore_index=True)
        now = t0 + (day + 1) * DAY_S
        store.set_shares("replay", lambda r: update(r, joined, now, s, seed=seed + day))  # noqa: B023
    equal = frauds * (best - float(np.mean(list(recall.values()))))
    return {"thompson": regret, "equal_split": equal, "oracle": 0.0, "frauds": float(frauds)}
