"""Incidents → one CloudEvent to a webhook and one retraining trigger, with a cool-down."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)
ALERT_TYPE = "org.relearn.drift.alert"


def post_cloudevent(url: str, data: dict[str, Any], timeout: float = 5.0) -> int:
    """POST a binary-mode CloudEvent (``org.relearn.drift.alert``); returns the HTTP status."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-type": ALERT_TYPE,
        "ce-source": "relearn/drift-detector",
        "ce-time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "content-type": "application/json",
    }
    request = urllib.request.Request(url, data=json.dumps(data).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


class Alerter:
    """Fires at most once per ``cooldown_s``: a drift episode spanning many windows is one incident.

    Every trigger (drift, quality, schedule, volume) shares the cool-down. A fired incident always goes to
    the webhook; what it starts depends on its ``response`` (:mod:`relearn.monitoring.response`):
    ``retrain`` (the default) calls ``retrain``, ``recalibrate`` calls ``recalibrate`` when one is wired,
    ``page`` starts nothing (a data bug: never train on broken data).
    """

    def __init__(
        self,
        cooldown_s: float,
        webhook_url: str | None,
        retrain: Callable[[dict[str, Any]], None] | None = None,
        last_fired: float | None = None,
        clock: Callable[[], float] = time.time,
        recalibrate: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.webhook_url = webhook_url
        self.retrain = retrain
        self.recalibrate = recalibrate
        self.last_fired = last_fired
        self.clock = clock

    def cooling(self) -> bool:
        """Whether an incident now would be suppressed."""
        return self.last_fired is not None and self.clock() - self.last_fired < self.cooldown_s

    def incident(self, data: dict[str, Any]) -> bool:
        """Report an incident; True when it fired (webhook + its response's action), False if suppressed."""
        if self.cooling():
            return False
        self.last_fired = self.clock()
        response = data.get("response", "retrain")
        log.warning(  # the audit trail of every fired incident, in the detector's structured log
            "incident fired", extra={"kind": data.get("kind"), "response": response, "why": data.get("why")}
        )
        if self.webhook_url:
            try:
                post_cloudevent(self.webhook_url, data)
            except OSError:
                log.warning("alert webhook %s failed", self.webhook_url, exc_info=True)
        action = {"retrain": self.retrain, "recalibrate": self.recalibrate}.get(response)
        if action is not None:
            try:
                action(data)
            except Exception:
                log.exception("%s trigger failed", response)
        return True
