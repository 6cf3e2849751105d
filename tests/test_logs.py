"""Progress bars in a log file: few redraws; on a terminal: the usual live line."""

from __future__ import annotations

import os
import time

from relearn.logs import progress_bar


def run_bar(out, items: int = 100, pause: float = 0.01) -> None:
    """A bar over ``items`` iterations of ``pause`` seconds (~1 s), written to ``out``."""
    for _ in progress_bar(range(items), file=out, desc="work"):
        time.sleep(pause)
    out.flush()


def test_a_bar_in_a_log_file_redraws_rarely(tmp_path) -> None:
    path = tmp_path / "log.txt"
    with path.open("w") as out:
        run_bar(out)
    assert path.read_text().count("\r") <= 3  # first draw, last draw, close


def test_a_bar_on_a_terminal_stays_live() -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w") as terminal:
            assert terminal.isatty()
            run_bar(terminal)
        written = b""
        os.set_blocking(leader, False)
        try:
            while chunk := os.read(leader, 65536):
                written += chunk
        except (BlockingIOError, OSError):
            pass
    finally:
        os.close(leader)
    assert written.count(b"\r") >= 5  # tqdm's default: a redraw every 0.1 s
