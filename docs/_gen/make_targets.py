"""Generate reference/make.md: the Makefile's targets and their ``## `` help, as ``make help`` prints them."""

from __future__ import annotations

import re
from pathlib import Path

import mkdocs_gen_files

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
TARGET = re.compile(r"^(?P<target>[a-zA-Z_-]+):.*## (?P<help>.*)$")


def generate() -> None:
    """Write one row per target with a ``## `` comment."""
    lines = [
        "# Make targets",
        "",
        "Generated from the Makefile's `## ` comments (what `make help` prints) when the site is built. "
        "`make setup` creates `.venv/platform` (kfp, feast, mlflow, kserve, torch 2.13.0 CPU), "
        "`.venv/drift` (alibi-detect) and `.venv/chart` (chart linters) from the exact pins in "
        "`requirements/`, and installs helm, kubectl and promtool; every target that needs an environment "
        "runs it first.",
        "",
        "| target | what it does |",
        "|---|---|",
    ]
    for line in MAKEFILE.read_text().splitlines():
        match = TARGET.match(line)
        if match:
            text = match["help"].replace("|", "\\|")
            lines.append(f"| `make {match['target']}` | {text} |")
    with mkdocs_gen_files.open("reference/make.md", "w") as page:
        page.write("\n".join(lines) + "\n")


generate()
