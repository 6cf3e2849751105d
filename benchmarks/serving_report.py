"""The serving benchmark's report: medians over rounds, the cells table and the ratio rows with their aims."""

from __future__ import annotations

import statistics

from benchmarks.serving_measure import (
    Cell,
)
from benchmarks.table import Row

TARGETS = ("predictor", "transformer", "kserve", "mlserver", "floor", "logging", "feast")
PROTOCOLS = ("rest", "grpc")
GOAL_BATCH, GOAL_CONCURRENCY = 1, 8


# --------------------------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarize(cells: list[Cell]) -> dict[tuple[str, str, int, int], dict[str, float]]:
    groups: dict[tuple[str, str, int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.target, c.protocol, c.batch, c.concurrency), []).append(c)
    out = {}
    for key, group in groups.items():
        good = [c for c in group if c.requests and c.errors <= 0.01 * c.requests]
        out[key] = {
            "rounds": len(good),
            "rps": median([c.rps for c in good]),
            "rows_per_s": median([c.rows_per_s for c in good]),
            "p50_ms": median([c.p50_ms for c in good]),
            "p99_ms": median([c.p99_ms for c in good]),
            "cpu_us_per_req": median([c.cpu_us_per_req for c in good]),
            "errors": sum(c.errors for c in group),
            "note": next((c.note for c in group if c.note), ""),
        }
    return out


def fmt(value: float, digits: int = 3) -> str:
    if value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def cells_table(medians: dict[tuple[str, str, int, int], dict[str, float]]) -> str:
    header = (
        "target",
        "proto",
        "batch",
        "conc",
        "req/s",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "rounds",
        "errors",
    )
    lines = [header]
    for (target, protocol, batch, conc), m in sorted(
        medians.items(), key=lambda kv: (TARGETS.index(kv[0][0]), kv[0][1:])
    ):
        lines.append((
            target, protocol, str(batch), str(conc), fmt(m["rps"]), fmt(m["rows_per_s"]), fmt(m["p50_ms"]),
            fmt(m["p99_ms"]), fmt(m["cpu_us_per_req"]), str(m["rounds"]),
            str(m["errors"]) + (f" ({m['note'][:60]})" if m["note"] else ""),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.rjust(w) if 1 < i < 10 else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def ratio_rows(medians: dict, startup: dict[str, float], feast: dict[str, list[float]] | None) -> list[Row]:
    """Ratios and goals as benchmarks.table rows (ours vs baselines at batch 1, c = 8; p99 vs floor)."""
    rows: list[Row] = []

    def get(
        target: str, protocol: str, key: str, batch: int = GOAL_BATCH, conc: int = GOAL_CONCURRENCY
    ) -> float:
        return medians.get((target, protocol, batch, conc), {}).get(key, float("nan"))

    def add(what: str, value: float, aim: str, ok: bool | None, size: str = "") -> None:
        if value != value:  # not measured (a target left out with --only, or failed)
            return
        met = ok
        rows.append(
            Row(
                what,
                size=size,
                ratio="-" if value != value else f"{value:.2f}x",
                aim=aim,
                ok=met,
                value=value,
            )
        )

    for protocol in PROTOCOLS:
        ours = get("predictor", protocol, "rps")
        size = f"{protocol} b{GOAL_BATCH} c{GOAL_CONCURRENCY}"
        ratio = ours / get("mlserver", protocol, "rps")
        add("predictor vs MLServer throughput", ratio, ">= 1.5x", ratio >= 1.5, size)
        ratio = ours / get("kserve", protocol, "rps")
        add("predictor vs default KServe throughput", ratio, ">= 2x", ratio >= 2.0, size)
        ratio = get("predictor", protocol, "p99_ms") / get("floor", protocol, "p99_ms")
        add("predictor p99 / floor p99", ratio, "<= 3x", ratio <= 3.0, size)
        ratio = get("transformer", protocol, "p99_ms") / get("floor", protocol, "p99_ms")
        add("transformer path p99 / floor p99", ratio, "", None, size)
        for batch in sorted({b for t, p, b, c in medians if t == "logging" and p == protocol}):
            # Logging on vs off, same batch and concurrency: throughput and p99 within 5 % (the aim).
            at = f"{protocol} b{batch} c{GOAL_CONCURRENCY}"
            kept = get("logging", protocol, "rps", batch) / get("predictor", protocol, "rps", batch)
            add("payload logging on / off: throughput", kept, ">= 0.95x", kept >= 0.95, at)
            p99 = get("predictor", protocol, "p99_ms", batch) / get("logging", protocol, "p99_ms", batch)
            add("payload logging on / off: p99 (off / on)", p99, ">= 0.95x", p99 >= 0.95, at)
        cpu = get("predictor", protocol, "cpu_us_per_req") / get("kserve", protocol, "cpu_us_per_req")
        add("predictor vs default KServe CPU/req", cpu, "", None, size)
    if feast:
        ours, plain = median(feast["relearn"]), median(feast["plain"])
        fresh = median(feast["fresh_store"])
        for what, value, aim in (
            ("Feast fetch p99, relearn path (online_features)", ours, "<= 2 ms"),
            ("Feast get_online_features p99 (long-lived store)", plain, ""),
            ("Feast get_online_features p99 (new store/request)", fresh, ""),
        ):
            ok = (value <= 2.0 if value == value else None) if aim else None
            rows.append(Row(what, size="1 entity", throughput=f"{value:.2f} ms", aim=aim, ok=ok, value=value))
        # The goal's baseline is calling FeatureStore.get_online_features per request (a new store each
        # time); the long-lived store's raw call is what online_features itself wraps (shown, no aim).
        add("new-store-per-request p99 / relearn p99", fresh / ours, ">= 3x", fresh / ours >= 3.0, "1 entity")
        add("long-lived store raw p99 / relearn fetch p99", plain / ours, "", None, "1 entity")
    for name, seconds in startup.items():
        rows.append(Row(f"start -> ready: {name}", seconds=seconds, value=seconds))
    return rows
