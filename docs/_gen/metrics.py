"""Generate reference/metrics.md at build time (mkdocs-gen-files): the metrics and the alerts.

Every Prometheus metric defined in src/relearn, found in the code's constructor calls (so a new metric is
listed without touching the docs), and every alert of the chart's PrometheusRule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("Counter", "Gauge", "Histogram", "Summary", "Info", "Enum")
RULES = ROOT / "charts" / "relearn" / "templates" / "prometheusrule.yaml"


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _strings(node: ast.expr | None) -> list[str] | None:
    if isinstance(node, ast.List | ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [str(e.value) for e in node.elts]  # type: ignore[attr-defined]
    return None


def _helpers(tree: ast.AST) -> dict[str, tuple[str, list[str] | None]]:
    """Local functions that wrap a metric constructor (``def gauge(name, doc): return Gauge(...)``)."""
    helpers = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
                    kind = _name(node.value.func)
                    if kind in KINDS:
                        labels = _strings(node.value.args[2]) if len(node.value.args) > 2 else None
                        defaults = [_strings(d) for d in fn.args.defaults]
                        helpers[fn.name] = (kind, labels or next((d for d in defaults if d), None))
    return helpers


def metrics_in(path: Path) -> list[dict]:
    """The metrics a module defines: name, kind, documentation, labels, where."""
    tree = ast.parse(path.read_text())
    helpers = _helpers(tree)
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or len(call.args) < 2:
            continue
        name, doc = call.args[0], call.args[1]
        if not (isinstance(name, ast.Constant) and str(name.value).startswith("relearn_")):
            continue
        called = _name(call.func)
        kind, labels = helpers.get(called, (called, None))
        if kind not in KINDS:
            continue
        named = [k.value for k in call.keywords if k.arg == "labelnames"]
        given = call.args[2] if len(call.args) > 2 else (named[0] if named else None)
        labels = _strings(given) or labels or []
        text = doc.value if isinstance(doc, ast.Constant) else ""
        found.append({"name": name.value, "kind": kind, "doc": text, "labels": labels, "where": path})
    return found


def exposed(metric: dict) -> str:
    """The name Prometheus scrapes (prometheus-client adds ``_total`` to counters)."""
    name = metric["name"]
    return name + "_total" if metric["kind"] == "Counter" and not name.endswith("_total") else name


def alerts(text: str) -> list[tuple[str, str, str]]:
    """``(alert, severity, description)`` of each rule of the PrometheusRule template."""
    found = []
    for block in re.split(r"\n\s*- alert: ", text)[1:]:
        name = block.split("\n", 1)[0].strip()
        severity = re.search(r"severity: (\S+)", block)
        description = re.search(r'description: "(.*)"', block) or re.search(r'summary: "(.*)"', block)
        words = description[1] if description else ""
        words = re.sub(r'\{\{ "\{\{ (.*?) \}\}" \}\}', r"`\1`", words)  # Prometheus' own templating
        words = re.sub(r"\{\{.*?\}\}", "…", words)  # values from the chart's settings
        found.append((name, severity[1] if severity else "", words))
    return found


def generate() -> None:
    """Write the metrics table and the alerts table."""
    src = ROOT / "src"
    metrics = [m for path in sorted(src.rglob("*.py")) for m in metrics_in(path)]
    lines = [
        "# Metrics and alerts",
        "",
        "Every `relearn_*` metric the code defines, found in its prometheus-client constructor calls when "
        "the site is built (`docs/_gen/metrics.py`). Counters are scraped with `_total`; histograms as "
        "`_bucket`, `_sum` and `_count`.",
        "",
        "| metric | type | labels | meaning | defined in |",
        "|---|---|---|---|---|",
    ]
    for m in sorted(metrics, key=exposed):
        where = m["where"].relative_to(src).with_suffix("").as_posix().replace("/", ".")
        labels = ", ".join(f"`{label}`" for label in m["labels"])
        doc = m["doc"].replace("|", "\\|")
        lines.append(f"| `{exposed(m)}` | {m['kind'].lower()} | {labels} | {doc} | `{where}` |")
    lines += [
        "",
        "## Alerts",
        "",
        "The chart's PrometheusRule (`charts/relearn/templates/prometheusrule.yaml`, tested with "
        "`promtool test rules`), generated from it; `…` stands for a value from the chart's settings "
        "(`monitoring.alerts.*`).",
        "",
        "| alert | severity | description |",
        "|---|---|---|",
    ]
    for name, severity, words in alerts(RULES.read_text()):
        words = words.replace("|", "\\|")
        lines.append(f"| `{name}` | {severity} | {words} |")
    with mkdocs_gen_files.open("reference/metrics.md", "w") as page:
        page.write("\n".join(lines) + "\n")


generate()
