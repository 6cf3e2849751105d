"""Fairness of the alerts across card-holder groups, with bootstrap intervals, and its gate rule.

Per attribute (:data:`relearn.data.cardholders.ATTRIBUTES`: age band, region) and group: the alert rate,
the recall (share of the group's frauds alerted) and the false-positive rate (share of its legitimate
transactions alerted, i.e. honest customers whose card is held up). Across the groups of an attribute:

* ``demographic_parity``: max - min of the alert rates;
* ``equalized_odds``: the larger of max - min of the recalls and max - min of the false-positive rates
  (the errors of the model fall alike on every group when both are 0).

Groups with fewer than ``min_positives`` frauds or legitimate rows are listed but not compared (their
recall is noise), nor is the ``unknown`` group (holders missing from the card-holder table).

Statistics are over *card holders*, not rows: a holder's transactions share the group and, for a fraud
burst, mostly the outcome (nine card-testing attempts caught or missed together), so resampling rows
would treat one victim as nine and make every interval too narrow. Intervals: holders are resampled with
:func:`relearn.model.stats.resample_counts` (seeded), each with all their rows, and every rate and
difference computed per resample; ``lower``/``upper`` are the one-sided bounds of
:func:`relearn.model.stats.bounds` at ``confidence``. Two reports on the same rows with the same seed
resample identical holders, so their draws are paired: :func:`disparity_failures` compares a candidate
with the champion on the difference of their disparities, resample by resample, as the gate does for
recall. The max - min of noisy rates is biased upwards (four groups of 30 frauds differ by ~20 points of
recall by chance alone), so an interval alone would report noise: a disparity is *reported* when it is
both material (its lower bound clears :data:`REPORT_TOLERANCE`) and significant (a permutation test: the
attributes shuffled among the holders, p < :data:`ALPHA` over the number of tests). numpy only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from relearn.data.cardholders import ATTRIBUTES, UNKNOWN
from relearn.model.stats import bounds, resample_counts

RATES: tuple[str, ...] = ("alert_rate", "recall", "false_positive_rate")
DIFFERENCES: tuple[str, ...] = ("demographic_parity", "equalized_odds")
# The smallest disparity worth reporting: a 10-point gap in recall or false-positive rate between groups,
# a 1-point gap in alert rates (as large as the whole default alert budget, relearn.settings.ALERT_BUDGET).
REPORT_TOLERANCE: dict[str, float] = {"demographic_parity": 0.01, "equalized_odds": 0.10}
# The largest increase over the champion's disparity the gate accepts (lower bound of the paired increase).
GATE_TOLERANCE: dict[str, float] = {"demographic_parity": 0.005, "equalized_odds": 0.05}
MIN_POSITIVES = 20
ALPHA = 0.05


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _interval(point: float, draws: np.ndarray, confidence: float) -> dict[str, float | None]:
    lower, upper = bounds(draws[np.isfinite(draws)], confidence)
    return {"value": _num(point), "lower": _num(lower), "upper": _num(upper)}


def _rates(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Rates from per-resample group sums ``(b, groups, 4)``: rows, frauds, alerted frauds, false alerts."""
    rows, pos, tp, fp = np.moveaxis(sums, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"alert_rate": (tp + fp) / rows, "recall": tp / pos, "false_positive_rate": fp / (rows - pos)}


def _differences(rates: dict[str, np.ndarray], compared: np.ndarray) -> dict[str, np.ndarray]:
    """Max - min across the compared groups, per resample (NaN with fewer than two groups)."""
    if compared.sum() < 2:
        nan = np.full(len(rates["alert_rate"]), np.nan)
        return {"demographic_parity": nan, "equalized_odds": nan}

    def spread(x: np.ndarray) -> np.ndarray:
        x = x[:, compared]
        return np.max(x, axis=1) - np.min(x, axis=1)

    return {
        "demographic_parity": spread(rates["alert_rate"]),
        "equalized_odds": np.maximum(spread(rates["recall"]), spread(rates["false_positive_rate"])),
    }


def _group_sums(holder_group: np.ndarray, sums: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``holder_group`` (``(b, holders)`` group codes), the ``(b, k, 4)`` sums of each group."""
    b = len(holder_group)
    flat = (np.arange(b)[:, None] * k + holder_group).ravel()
    cols = [np.bincount(flat, np.tile(sums[:, j], b), minlength=b * k) for j in range(4)]
    return np.stack(cols, axis=1).reshape(b, k, 4)


def _attribute(
    holder_group: np.ndarray, names: list[str], sums: np.ndarray, boot: list[np.ndarray], **opts: Any
) -> dict[str, Any]:
    """The report of one attribute.

    ``holder_group``: each holder's index into ``names``; ``sums``: per holder, rows, frauds, alerted
    frauds and false alerts; ``boot``: resampled holder counts.
    """
    k = len(names)
    member = (holder_group[:, None] == np.arange(k)[None, :]).astype(np.float64)
    x = (member[:, :, None] * sums[:, None, :]).reshape(len(sums), 4 * k)  # holder x (group, sum)
    point_sums = x.sum(axis=0).reshape(k, 4)
    enough = np.minimum(point_sums[:, 1], point_sums[:, 0] - point_sums[:, 1]) >= opts["min_positives"]
    compared = enough & np.array([n != UNKNOWN for n in names])
    point = _rates(point_sums[None])
    point_diff = _differences(point, compared)
    draws = [_rates((counts @ x).reshape(len(counts), k, 4)) for counts in boot]
    rate_draws = {r: np.concatenate([d[r] for d in draws]) for r in RATES}
    diff_draws = _differences(rate_draws, compared)
    # The permutation null: the same holders and outcomes, the attribute dealt to them at random.
    rng = np.random.default_rng(opts["seed"])
    shuffled = holder_group[np.argsort(rng.random((opts["n_perm"], len(holder_group))), axis=1)]
    null = _differences(_rates(_group_sums(shuffled, sums, k)), compared)
    out: dict[str, Any] = {"groups": {}}
    for j, name in enumerate(names):
        row: dict[str, Any] = {
            "n": int(point_sums[j, 0]),
            "positives": int(point_sums[j, 1]),
            "compared": bool(compared[j]),
        }
        for r in RATES:
            row[r] = _interval(point[r][0, j], rate_draws[r][:, j], opts["confidence"])
        out["groups"][name] = row
    for d in DIFFERENCES:
        value = point_diff[d][0]
        p = (
            None
            if not np.isfinite(value)
            else (1 + int((null[d] >= value - 1e-12).sum())) / (1 + len(null[d]))
        )
        out[d] = _interval(value, diff_draws[d], opts["confidence"]) | {"p_value": p}
        out[d]["draws"] = [_num(v) for v in diff_draws[d]]
    return out


def fairness_report(
    frame: pd.DataFrame,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    threshold: float,
    *,
    attributes: Sequence[str] = tuple(ATTRIBUTES),
    holder: str = "user_id",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.975,
    min_positives: int = MIN_POSITIVES,
    tolerance: dict[str, float] | None = None,
    alpha: float = ALPHA,
    n_perm: int = 400,
) -> dict[str, Any]:
    """Per-group rates and the disparities of the alerts ``scores >= threshold``, JSON-ready.

    Args:
        frame: The scored rows, with the attribute columns (absent attributes are skipped) and ``holder``.
        scores: Fraud scores, one per row of ``frame``.
        labels: 1 for fraud, 0 otherwise.
        threshold: The decision threshold (ties alert, as in serving).
        attributes: Which columns of ``frame`` to group by.
        holder: The card-holder column, the unit of resampling (without it, each row is its own holder).
        n_boot: Bootstrap resamples of the holders.
        seed: Seed of the resamples and permutations; reports on the same rows with the same seed are paired.
        confidence: One-sided confidence of the bounds (0.975: the ends of a 95 % interval).
        min_positives: Frauds and legitimate rows a group needs to be compared.
        tolerance: Per difference, the size above which (lower bound) a disparity is reported;
            defaults to :data:`REPORT_TOLERANCE`.
        alpha: A disparity is reported only if its permutation p-value is below this, divided by the
            number of tests (attributes x differences): the chance that a report on a world without
            disparity reports any is at most ``alpha``.
        n_perm: Permutations of the attributes among the holders, for the p-values.

    Returns:
        ``threshold, n, positives, holders, n_boot, seed, confidence, min_positives, tolerance, alpha,
        rows`` (a digest of the labels, holders and groups, to recognise paired reports), ``attributes`` (per
        attribute: ``groups`` with ``n``, ``positives``, ``compared`` and each rate as
        ``value/lower/upper``; each difference as ``value/lower/upper/p_value/draws``) and ``reported``:
        one readable line per disparity that is both material (lower bound above tolerance) and
        significant (p-value below ``alpha``).
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    if not len(s) == len(y) == len(frame):
        raise ValueError(f"rows differ: {len(frame)} rows, {len(s)} scores, {len(y)} labels")
    alert = s >= threshold
    if holder in frame:
        holder_ids, row_holder = np.unique(frame[holder].astype(str).to_numpy(), return_inverse=True)
    else:
        holder_ids, row_holder = np.arange(len(y)), np.arange(len(y))
    n_holders = len(holder_ids)
    per_row = np.stack([np.ones(len(y)), y, y & alert, ~y & alert], 1).astype(np.float64)
    sums = np.stack([np.bincount(row_holder, per_row[:, j], minlength=n_holders) for j in range(4)], 1)
    tolerance = {**REPORT_TOLERANCE, **(tolerance or {})}
    boot = list(resample_counts(n_holders, n_boot, np.random.default_rng(seed)))
    digest = hashlib.sha256(np.packbits(y).tobytes() + row_holder.astype(np.int64).tobytes())
    report: dict[str, Any] = {
        "threshold": float(threshold),
        "n": len(y),
        "positives": int(y.sum()),
        "holders": n_holders,
        "n_boot": n_boot,
        "seed": seed,
        "confidence": confidence,
        "min_positives": min_positives,
        "tolerance": tolerance,
        "alpha": alpha,
        "attributes": {},
        "reported": [],
    }
    opts = {"min_positives": min_positives, "confidence": confidence, "n_perm": n_perm, "seed": seed}
    for name in attributes:
        if name not in frame:
            continue
        values = frame[name].fillna(UNKNOWN).astype(str).to_numpy()
        known = list(ATTRIBUTES.get(name, ()))
        names = known + sorted(set(values) - set(known))
        groups = pd.Categorical(values, categories=names).codes.astype(np.int64)
        holder_group = np.zeros(n_holders, dtype=np.int64)
        holder_group[row_holder] = groups  # a holder has one group (the last row's, should rows disagree)
        digest.update(name.encode() + holder_group.tobytes())
        report["attributes"][name] = _attribute(holder_group, names, sums, boot, **opts)
    # Bonferroni: the report runs one test per attribute and difference, and any of them would report.
    tests = [(n, d, r[d]) for n, r in report["attributes"].items() for d in DIFFERENCES if r[d]["p_value"]]
    for name, d, row in tests:
        if row["lower"] > tolerance[d] and row["p_value"] < alpha / len(tests):
            report["reported"].append(
                f"{name}: {d} {row['value']:.3f} [{row['lower']:.3f}, {row['upper']:.3f}] exceeds "
                f"{tolerance[d]:g} (p = {row['p_value']:.3f})"
            )
    report["rows"] = digest.hexdigest()[:16]
    return report


def disparity_failures(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    tolerance: float | Mapping[str, float] = GATE_TOLERANCE,
) -> list[str]:
    """Why the candidate's disparities block it: each one that exceeds the champion's by over ``tolerance``.

    ``tolerance`` is one number for both differences or one per difference (alert rates are on the scale
    of the alert budget, a hundred times smaller than recall). The increase is the candidate's disparity
    minus the champion's; it blocks when its lower bound (at the candidate report's confidence) is above
    the tolerance. Reports on the same rows and resamples are compared resample by resample (paired);
    otherwise the candidate's lower bound is compared with the champion's upper bound. Without a champion
    report there is nothing to compare: no failure.
    """
    if champion is None:
        return []
    paired = all(candidate.get(k) == champion.get(k) for k in ("rows", "n", "n_boot", "seed"))
    confidence = candidate["confidence"]
    limits = tolerance if isinstance(tolerance, Mapping) else dict.fromkeys(DIFFERENCES, tolerance)
    failures = []
    for name, cand in candidate["attributes"].items():
        champ = champion["attributes"].get(name)
        if champ is None:
            continue
        for d in DIFFERENCES:
            c, r = cand[d], champ[d]
            if c["value"] is None or r["value"] is None:
                continue
            if paired:
                diff = np.array(c["draws"], np.float64) - np.array(r["draws"], np.float64)  # None -> NaN
                lower = bounds(diff[np.isfinite(diff)], confidence)[0]
            else:
                lower = None if c["lower"] is None or r["upper"] is None else c["lower"] - r["upper"]
            if lower is not None and lower > limits[d]:
                failures.append(
                    f"{name} {d}: {c['value']:.3f} vs champion {r['value']:.3f}; the increase "
                    f"{c['value'] - r['value']:+.3f} (lower bound {lower:+.3f}) exceeds the tolerance "
                    f"{limits[d]:g}"
                )
    return failures


def html_section(report: dict[str, Any]) -> str:
    """The evaluation report's fairness section (HTML).

    The reported disparities first, then per attribute each group's rates with intervals and the differences.
    """
    import html

    def interval(x: dict[str, Any]) -> str:
        return "–" if x.get("value") is None else f"{x['value']:.3f} [{x['lower']:.3f}, {x['upper']:.3f}]"

    parts = ["<h2>Fairness by card-holder group</h2>"]
    found = report.get("reported") or ["no disparity reported (material and significant)"]
    parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in found) + "</ul>")
    for name, attribute in report.get("attributes", {}).items():
        parts.append(f"<h3>{html.escape(name)}</h3><table><tr><th>group</th><th>n</th><th>fraud</th>")
        parts.append("".join(f"<th>{r}</th>" for r in RATES) + "</tr>")
        for group, row in attribute["groups"].items():
            parts.append(
                f"<tr><td>{html.escape(group)}</td><td>{row['n']:,}</td><td>{row['positives']:,}</td>"
            )
            parts.append("".join(f"<td>{interval(row[r])}</td>" for r in RATES) + "</tr>")
        parts.append("</table><p class='sub'>")
        parts.append("; ".join(f"{d} {interval(attribute[d])}" for d in DIFFERENCES) + "</p>")
    return "\n".join(parts)
