"""The docs run: one clone after `make train` (the session's `trained` home, copied) for every block, and the
summary line of how each block was tested."""

from __future__ import annotations

from collections import Counter

import pytest
from doc_blocks import blocks
from doc_kinds import RESULTS, write_files
from doc_workspace import Workspace, machine_lock


@pytest.fixture(scope="module")
def workspace(trained, tmp_path_factory):  # module: the locks are released before other modules run
    with machine_lock():
        space = Workspace(tmp_path_factory.mktemp("docs"), trained["home"], blocks())
        write_files(space.blocks, space)
        yield space


def pytest_terminal_summary(terminalreporter):
    """One line: how many code blocks the docs have and how each was tested."""
    if not RESULTS:
        return
    counts = Counter(RESULTS.values())
    order = ["run", "dry-run", "covered by tests", "output", "diagram", "failed"]
    parts = ", ".join(f"{counts[label]} {label}" for label in order if counts[label])
    files = len({key.rsplit(":", 1)[0] for key in RESULTS})
    terminalreporter.write_line(
        f"docs: {len(RESULTS)} code blocks in {files} files: {parts}", green="failed" not in counts, bold=True
    )
