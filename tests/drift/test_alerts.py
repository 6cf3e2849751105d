"""One incident → one trigger: the cool-down suppresses repeats; the webhook gets a CloudEvent."""

from __future__ import annotations

from relearn.monitoring.alerts import ALERT_TYPE, Alerter


def test_cooldown_fires_once_per_incident_and_posts_cloudevent(webhook):
    webhook_url, received = webhook
    now = [1000.0]
    runs: list[dict] = []
    alerter = Alerter(600, webhook_url, runs.append, clock=lambda: now[0])
    fired = []
    for step in range(10):  # a drift episode over 10 windows, 30 s apart
        now[0] = 1000.0 + 30 * step
        fired.append(alerter.incident({"kind": "drift", "window": step}))
    now[0] = 1000.0 + 700  # after the cool-down: a new incident fires again
    fired.append(alerter.incident({"kind": "drift", "window": 99}))
    assert fired == [True] + [False] * 9 + [True]
    assert len(runs) == 2 and len(received) == 2
    assert received[0]["type"] == ALERT_TYPE
