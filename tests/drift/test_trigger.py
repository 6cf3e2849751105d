"""Local retraining trigger: a configurable command, started once per incident thanks to the cool-down."""

from __future__ import annotations

import shlex
import sys
import time

from relearn.monitoring.alerts import Alerter
from relearn.monitoring.settings import DriftSettings
from relearn.monitoring.trigger import retrain_action


def test_local_mode_runs_the_command_once_per_incident(tmp_path):
    marker = tmp_path / "runs.txt"
    script = f"open({str(marker)!r}, 'a').write('run\\n')"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    settings = DriftSettings(trigger_mode="local", local_command=command, cooldown_s=600, data_dir=tmp_path)
    now = [1000.0]
    alerter = Alerter(settings.cooldown_s, None, retrain_action(settings), clock=lambda: now[0])
    fired = []
    for step in range(6):  # one drift episode: six windows in a row, 60 s apart
        now[0] = 1000.0 + 60 * step
        fired.append(alerter.incident({"kind": "drift", "window": step}))
    assert fired == [True] + [False] * 5
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a second (wrong) run would have appended by now
    assert marker.read_text() == "run\n"
