"""The docs run: one clone after `make train` (the session's `trained` home, copied) for every block, and the
summary line of how each block was tested."""

from __future__ import annotations

from collections import Counter

import pytest

from docs.doc_blocks import blocks
from docs.doc_kinds import RESULTS
from docs.doc_workspace import Workspace, machine_lock


@pytest.fixture(scope="module")
def workspace(trained, tmp_path_factory):  # module: the locks are released before other modules run
    with machine_lock():
        yield Workspace(tmp_path_factory.mktemp("docs"), trained["home"], blocks())


def pytest_terminal_summary(terminalreporter):
    """One line: how many code blocks the docs have and how each was tested."""
    if not RESULTS:
        return
    counts = Counter(RESULTS.values())
    order = ["run", "dry-run", "covered by tests", "output", "diagram", "failed"]
    plural = {"diagram": "diagrams"}
    parts = ", ".join(f"{counts[k]} {plural.get(k, k) if counts[k] > 1 else k}" for k in order if counts[k])
    files = len({key.rsplit(":", 1)[0] for key in RESULTS})
    terminalreporter.write_line(
        f"docs: {len(RESULTS)} code blocks in {files} file{'s' * (files > 1)}: {parts}",
        green="failed" not in counts,
        red="failed" in counts,
        bold=True,
    )
