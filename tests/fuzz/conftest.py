"""The fuzz suite's one stack of servers (started once per session) and its figures in pytest's summary."""

from __future__ import annotations

import pytest

from fuzz.fuzz_harness import RESULTS
from fuzz.fuzz_stack import FuzzStack


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory):
    """Predictor, transformer, router, drift detector and feature feed on 127.0.0.1."""
    stack = FuzzStack(tmp_path_factory.mktemp("fuzz"))
    try:
        yield stack.start().wait_ready()
    finally:
        stack.close()


def pytest_terminal_summary(terminalreporter):
    """One line per fuzzed endpoint: cases, answers, seconds (a failed run shows where it stopped)."""
    if not RESULTS:
        return
    terminalreporter.section("fuzz: cases per endpoint")
    for tally in RESULTS.values():
        answers = ", ".join(f"{answer}: {n}" for answer, n in sorted(tally.answers.items()))
        terminalreporter.write_line(
            f"{tally.name}: {tally.cases} cases in {tally.seconds:.1f} s, {tally.failures} failed "
            f"(5xx, reset or broken call); answers {answers}"
        )
