"""The documentation site (issue 23): ``mkdocs build --strict`` passes, the generated reference is there and
complete, and README.md stays short with working links.

The code blocks of the pages are tested by tests/docs; this is the site around them.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")
GENERATED = ["reference/cli", "reference/make", "reference/chart-values", "reference/metrics"]
GENERATED += ["reference/http"]
GENERATED += ["reference/api/core"] + [
    f"reference/api/{p.parent.name}" for p in sorted((ROOT / "src" / "relearn").glob("*/__init__.py"))
]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``make docs`` into ``site``: strict, so a broken link, a missing page or a page off the nav fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    cmd = [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} missing: make setup installs requirements/docs.txt")
    out = tmp_path_factory.mktemp("site")
    done = build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    return out


def text_of(site: Path, page: str) -> str:
    """The words of a built page's article (no navigation, no markup)."""
    source = (site / page / "index.html").read_text()
    (article,) = re.findall(r"<article[^>]*>(.*?)</article>", source, re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", article))


def test_every_generated_reference_page_is_built_and_not_empty(site: Path) -> None:
    for page in GENERATED:
        assert (site / page / "index.html").exists(), f"{page} was not generated"
        assert len(text_of(site, page).split()) > 50, f"{page} is (nearly) empty"


def test_the_cli_reference_has_every_entry_points_help(site: Path) -> None:
    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "docs" / "_gen" / "cli_help.py")
    cli_help = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_help)
    modules = cli_help.entry_points()
    text = text_of(site, "reference/cli")
    assert {"relearn.demo", "relearn.monitoring.skew", "relearn.rollout.cli", "pipelines.run"} <= set(modules)
    for module in modules:
        assert f"python -m {module}" in text
    assert "usage: kubectl relearn" in text and "--scenario" in text  # the help itself, not only headings


def test_every_metric_an_alert_uses_is_in_the_metrics_reference(site: Path) -> None:
    rules = (ROOT / "charts" / "relearn" / "templates" / "prometheusrule.yaml").read_text()
    rules = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", rules, flags=re.S)  # template comments
    rules = re.sub(r"^\s*#.*$", "", rules, flags=re.M)  # YAML comments
    names = re.findall(r"\b(relearn_[a-z0-9_]+)\b(?!\s*(?:=|!=|=~|!~))", rules)  # not label matchers
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in names}
    text = text_of(site, "reference/metrics")
    assert used and sorted(m for m in used if m not in text) == []
    for alert in re.findall(r"- alert: (\w+)", rules):
        assert alert in text


def test_the_http_reference_has_the_detectors_and_the_feeds_routes(site: Path) -> None:
    text = text_of(site, "reference/http")
    for route in ("/labels", "/ready", "/v1/backtest/labels", "/transactions", "/chargebacks"):
        assert f"{route} " in text
    assert "inference.GRPCInferenceService" in text


def test_the_chart_values_reference_has_every_top_level_key(site: Path) -> None:
    import json

    schema = json.loads((ROOT / "charts" / "relearn" / "values.schema.json").read_text())
    text = text_of(site, "reference/chart-values")
    assert [key for key in schema["properties"] if key not in text] == []


def test_the_readme_is_short_starts_with_the_two_commands_and_its_links_work() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 6000, f"README.md has {len(readme)} characters (at most 6,000: the rest is docs/)"
    first_screen = "\n".join(readme.splitlines()[:50])
    assert "make demo" in first_screen and "make test" in first_screen
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert any(link.startswith("docs/") for link in links)
    assert [link for link in links if not link.startswith("http") and not (ROOT / link).exists()] == []
