"""The demo's stop path: nothing of a child's session survives it, and the verdict waits for the kernel."""

from __future__ import annotations

import os
import sys
import time

from relearn.demo.stack import Processes, left_running, session_members

# A server that ignores SIGTERM, with a worker in its process group and one that made a group of its own (as
# gunicorn and kfp.local task subprocesses may): a group kill alone leaves the second one running.
SERVER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
subprocess.Popen([sys.executable, "-c", "import os, time; os.setpgid(0, 0); time.sleep(300)"])
time.sleep(300)
"""


def test_stop_all_leaves_no_live_process_in_any_childs_session(tmp_path) -> None:
    for _ in range(3):  # repeated: the race it guards against was intermittent
        procs = Processes(log_dir=tmp_path / "logs", env=dict(os.environ))
        children = [procs.start(f"server-{i}", [sys.executable, "-c", SERVER]) for i in range(3)]
        deadline = time.monotonic() + 30
        while any(len(session_members(c.process.pid)) < 3 for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(len(session_members(c.process.pid)) == 3 for c in children)
        for child in reversed(children):
            procs.stop(child, timeout=0.5)
        assert left_running(children) == []  # judged at once, as the demo does
