"""Schedule and volume triggers: through the monitor's incident path (cool-down, webhook, metrics), the KFP
recurring run the cluster mode creates (exact API calls), and impossible settings refused by name."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from kfp_stand_in import KfpApi, kfp_stand_in
from prometheus_client import generate_latest
from pydantic import ValidationError

from relearn.monitoring.alerts import Alerter
from relearn.monitoring.metrics import Metrics
from relearn.monitoring.monitor import Monitor
from relearn.monitoring.settings import DriftSettings
from relearn.monitoring.trigger import RECURRING_RUN, ensure_recurring_run
from relearn.monitoring.triggers import CHECK_S

HOUR = 3600.0


def _monitor(tmp_path, webhook_url, now, **options):
    settings = DriftSettings(data_dir=tmp_path, reports=False, cooldown_s=HOUR, **options)
    runs: list[dict] = []
    alerter = Alerter(settings.cooldown_s, webhook_url, runs.append, clock=lambda: now[0])
    monitor = Monitor(settings, Metrics(), alerter)
    monitor.triggers.clock = lambda: now[0]
    return monitor, runs


def _counter(monitor, reason, result):
    text = generate_latest(monitor.metrics.registry).decode()
    line = f'relearn_drift_retrain_triggers_total{{reason="{reason}",result="{result}"}} '
    found = [x for x in text.splitlines() if x.startswith(line)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_schedule_fires_on_the_local_clock_once_per_interval(tmp_path, webhook):
    url, received = webhook
    now = [1_000_000.0]
    monitor, runs = _monitor(tmp_path, url, now, schedule_interval_s=6 * HOUR)
    fired = []
    for _ in range(int(13 * HOUR / 60)):  # 13 hours, checked every minute
        fired.append(monitor.triggers.check())
        now[0] += 60
    assert [i for i, reason in enumerate(fired) if reason] == [360, 720]  # at 6 h and 12 h
    assert [r["kind"] for r in runs] == ["schedule", "schedule"]
    assert runs[0]["response"] == "retrain" and runs[0]["why"] == "schedule trigger"
    assert [e["data"]["kind"] for e in received] == ["schedule", "schedule"]
    assert _counter(monitor, "schedule", "fired") == 2
    assert _counter(monitor, "schedule", "suppressed") == 0  # not re-raised while it cools down


def test_a_drift_trigger_restarts_the_schedule_and_shares_the_cooldown(tmp_path, webhook):
    url, _ = webhook
    now = [1_000_000.0]
    monitor, runs = _monitor(tmp_path, url, now, schedule_interval_s=6 * HOUR)
    monitor.triggers.check()  # the schedule's origin: the first start
    now[0] += 5 * HOUR
    monitor._incident({"kind": "drift", "track": "stable", "drifted": ["log_amount"]})
    now[0] += 2 * HOUR  # 7 h after the start, 2 h after the drift trigger: not due
    assert monitor.triggers.check() is None
    now[0] += 4 * HOUR + CHECK_S  # 6 h after the drift trigger
    assert monitor.triggers.check() == "schedule"
    assert [r["kind"] for r in runs] == ["drift", "schedule"]
    assert _counter(monitor, "drift", "fired") == 1


def test_in_a_cluster_the_detectors_clock_starts_one_kfp_run_per_due_schedule_within_the_cooldown(
    tmp_path, webhook
):
    """The default cluster schedule (schedule_runner=detector): a due schedule is an incident whose action
    is one KFP run of the training pipeline, so it shares the cool-down with drift and is counted; the
    detector creates no recurring run (KFP would fire that on its own)."""
    from pipelines.compile import compile_all
    from relearn.monitoring.trigger import retrain_action

    url, _ = webhook
    (package,) = (p for p in compile_all(tmp_path) if p.stem == "relearn-train")
    now = [1_000_000.0]
    with kfp_stand_in([{"experiment_id": "exp-1", "display_name": "Default"}]) as host:
        options = {"trigger_mode": "cluster", "kfp_host": host, "kfp_package": str(package)}
        options |= {"data_dir": tmp_path, "reports": False, "cooldown_s": HOUR}
        settings = DriftSettings(**options, schedule_interval_s=6 * HOUR)
        alerter = Alerter(settings.cooldown_s, url, retrain_action(settings), clock=lambda: now[0])
        monitor = Monitor(settings, Metrics(), alerter)
        monitor.triggers.clock = lambda: now[0]
        monitor.triggers.check()  # the origin
        now[0] += 5 * HOUR
        monitor._incident({"kind": "drift", "track": "stable", "drifted": ["log_amount"]})  # run 1
        now[0] += 5 * HOUR + 30 * 60  # 10.5 h: 6 h after the start, but only 5.5 h after the drift run
        assert monitor.triggers.check() is None
        now[0] += 30 * 60 + CHECK_S  # 6 h after the drift run
        assert monitor.triggers.check() == "schedule"  # run 2
        runs = [b for m, p, b in KfpApi.calls if (m, p) == ("POST", "/apis/v2beta1/runs")]
    assert [r["display_name"] for r in runs] == ["relearn-retrain (drift)", "relearn-retrain (schedule)"]
    assert not [p for m, p, _ in KfpApi.calls if "recurringruns" in p]
    assert _counter(monitor, "schedule", "fired") == 1 and _counter(monitor, "drift", "fired") == 1


def test_volume_counts_matured_labelled_predictions_since_the_last_trigger(tmp_path):
    now = [1_000_000.0]
    monitor, runs = _monitor(tmp_path, None, now, volume_labels=300, label_maturity_s=HOUR)
    conn = monitor.conn
    monitor.triggers.check()  # origin: now
    t0 = now[0]
    rows = [(f"t{i}", "stable", t0 + i, 0.1, "1") for i in range(400)]
    rows += [(f"s{i}", "shadow", t0 + i, 0.1, "2") for i in range(400)]  # mirrored: not new traffic
    conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?)", rows)
    now[0] += 1000  # the checks come after these predictions
    label = t0 + 250 + HOUR  # labels mature up to t250: 250 labelled, not enough
    conn.execute("INSERT INTO labels VALUES ('t3', 1, ?, ?)", (label, label))
    assert monitor.triggers.check() is None
    conn.execute("INSERT INTO labels VALUES ('t7', 1, ?, ?)", (label + 100, label + 100))  # up to t350
    now[0] += CHECK_S
    assert monitor.triggers.check() == "volume"
    assert runs[-1]["kind"] == "volume" and runs[-1]["labelled"] == 350  # t1..t350 (t0 is the origin)
    now[0] += 2 * HOUR  # after the cool-down: no new labelled predictions since the trigger
    assert monitor.triggers.check() is None
    assert _counter(monitor, "volume", "fired") == 1


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"schedule_interval_s": 600, "cooldown_s": 3600}, "schedule_interval_s"),
        ({"schedule_interval_s": -5}, "schedule_interval_s"),
        ({"volume_labels": 0}, "volume_labels"),
        ({"cooldown_s": -1}, "cooldown_s"),
    ],
)
def test_impossible_trigger_settings_are_refused_by_name(tmp_path, options, named):
    with pytest.raises(ValidationError, match=named):
        DriftSettings(data_dir=tmp_path, **options)


def test_the_server_refuses_an_impossible_schedule_and_starts_nothing(tmp_path):
    """The real server process: exits naming the setting, before it opens its data dir or a port."""
    argv = ["--data-dir", str(tmp_path / "d"), "--schedule-interval-s", "60", "--cooldown-s", "3600"]
    command = [sys.executable, "-m", "relearn.monitoring.server", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert re.search(r"schedule_interval_s \(60\) must be at least cooldown_s \(3600\)", done.stderr)
    assert not (tmp_path / "d").exists()


def test_cluster_schedule_is_one_kfp_recurring_run(tmp_path):
    from pipelines.compile import compile_all

    (package,) = (p for p in compile_all(tmp_path) if p.stem == "relearn-train")
    with kfp_stand_in([{"experiment_id": "exp-1", "display_name": "Default"}]) as host:
        assert ensure_recurring_run(host, str(package), 86400) == "rr-7"
        posts = [(p, b) for m, p, b in KfpApi.calls if m == "POST"]
        assert [p for p, _ in posts] == ["/apis/v2beta1/recurringruns"]
        body = posts[0][1]
        assert body["display_name"] == RECURRING_RUN and body["experiment_id"] == "exp-1"
        assert body["trigger"]["periodic_schedule"]["interval_second"] == 86400
        assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
        assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "relearn-train"
        # A restarted detector finds it and creates no second one; another interval replaces it.
        KfpApi.calls = []
        KfpApi.recurring = [{"recurring_run_id": "rr-7", "display_name": RECURRING_RUN,
                             "trigger": {"periodic_schedule": {"interval_second": "86400"}}}]  # fmt: skip
        assert ensure_recurring_run(host, str(package), 86400) == "rr-7"
        assert [m for m, _, _ in KfpApi.calls if m != "GET"] == []
        KfpApi.calls = []
        ensure_recurring_run(host, str(package), 3600)
        assert [(m, p) for m, p, _ in KfpApi.calls if m != "GET"] == [
            ("DELETE", "/apis/v2beta1/recurringruns/rr-7"),
            ("POST", "/apis/v2beta1/recurringruns"),
        ]
