"""The conformance table: each test's (client, route, endpoint) cell and its outcome, as Markdown.

Each test module names its tests' cells with ``cell(test, params) -> (client, route, endpoint)``; the
suite's conftest records them on the reports and prints the table after the run (the README's copy is
pasted from there).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

COLUMNS = ("predictor", "transformer", "router", "detector")
ROUTES = ("v2 REST", "v2 gRPC", "v1 REST")  # first in the table; the others follow in run order


def outcome(report: Any) -> str | None:
    """pass / xfail / FAIL of a report (None: not a verdict, e.g. a passing setup)."""
    if hasattr(report, "wasxfail"):
        return "xfail" if report.skipped else "FAIL"
    if report.failed:
        return "FAIL"  # a strict xfail that passed included
    if report.passed and report.when == "call":
        return "pass"
    return None


def _shown(verdicts: list[str]) -> str:
    if not verdicts:
        return "—"
    counts = {v: verdicts.count(v) for v in ("FAIL", "xfail", "pass") if v in verdicts}
    return ", ".join(f"{v} ({n})" for v, n in counts.items())


def render(results: list[tuple[tuple[str, str, str], str]]) -> str:
    """Markdown rows ``client | route | predictor | transformer | router | detector``; a cell counts its
    tests by outcome (``pass (8)``, ``xfail (1), pass (7)``, ``FAIL (1), ...``), ``—`` where none ran."""
    cells: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for (client, route, endpoint), verdict in results:
        cells[client, route][endpoint].append(verdict)
    rank = lambda row: ROUTES.index(row[1]) if row[1] in ROUTES else len(ROUTES)  # noqa: E731
    lines = [
        "| client | route / protocol | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for client, route in sorted(cells, key=rank):  # stable: run order within a rank
        shown = [_shown(cells[client, route].get(endpoint, [])) for endpoint in COLUMNS]
        lines.append(f"| `{client}` | {route} | " + " | ".join(shown) + " |")
    return "\n".join(lines)
