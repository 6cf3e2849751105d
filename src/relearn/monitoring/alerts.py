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
    """Fires at most once per ``cooldown_s``: a drift episode spanning many windows is one incident."""

    def __init__(
        self,
        cooldown_s: float,
        webhook_url: str | None,
        retrain: Callable[[dict[str, Any]], None] | None = None,
        last_fired: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.webhook_url = webhook_url
        self.retrain = retrain
        self.last_fired = last_fired
        self.clock = clock

    def incident(self, data: dict[str, Any]) -> bool:
        """Report an incident; returns True when it fired (webhook + retraining), False if suppressed."""
        now = self.clock()
        if self.last_fired is not None and now - self.last_fired < self.cooldown_s:
            return False
        self.last_fired = now
        if self.webhook_url:
            try:
                post_cloudevent(self.webhook_url, data)
            except OSError:
                log.warning("alert webhook %s failed", self.webhook_url, exc_info=True)
        if self.retrain is not None:
            try:
                self.retrain(data)
            except Exception:
                log.exception("retraining trigger failed")
        return True
