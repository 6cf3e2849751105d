"""What a post-install check (:mod:`relearn.checks`) sends and accepts: its answers, results and verdicts.

A final failure is :class:`CheckFailed`, one that may pass while pods start :class:`NotYet`; a check's
outcome is a :class:`Result`, printed as one JSON line. The prediction check sends
:func:`example_transaction` and judges the transformer's v1 answer with :func:`validate_prediction`.
Standard library only, like the checks: it runs in any relearn image.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class CheckFailed(Exception):
    """A final answer that fails the check (not retried); ``status`` is the HTTP status, if any."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class NotYet(CheckFailed):
    """An answer that may change while pods start: retried until the deadline."""


@dataclass
class Answer:
    """One HTTP answer: status and body."""

    status: int
    body: bytes


@dataclass
class Result:
    """The outcome of one check, printed as one JSON line."""

    check: str
    ok: bool
    url: str
    status: int | None = None
    attempts: int = 0
    seconds: float = 0.0
    detail: str = ""
    hint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The check's JSON line."""
        out: dict[str, Any] = {
            "check": self.check,
            "ok": self.ok,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            **self.extra,
        }
        if not self.ok and self.hint:
            out["hint"] = self.hint
        return json.dumps(out, sort_keys=False)


def example_transaction(now: datetime | None = None) -> dict[str, Any]:
    """One realistic transaction with every request field (relearn.data.schema.REQUEST_FIELDS).

    Its card, merchant and device are the check's own (cold-start defaults in the transformer), so it changes
    no real entity's features; its transaction_id is unique per call and starts with ``relearn-check-``.
    """
    now = now or datetime.now(UTC)
    return {
        "transaction_id": f"relearn-check-{uuid.uuid4().hex[:12]}",
        "event_timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user_id": "relearn-check-user",
        "merchant_id": "relearn-check-merchant",
        "amount": 42.5,
        "currency": "EUR",
        "merchant_category": "grocery",
        "channel": "pos",
        "country": "DE",
        "device_id": "relearn-check-device",
    }


def validate_prediction(body: bytes, transaction_id: str) -> dict[str, Any]:
    """Check a v1 answer of the transformer; return what the result line reports, or raise CheckFailed.

    Expected: ``{"predictions": [{"transaction_id", "score", "decision"}], "model_version"}``.
    """
    try:
        answer = json.loads(body)
    except ValueError:
        raise CheckFailed(f"answer is not JSON: {body[:200]!r}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("predictions"), list):
        raise CheckFailed(f'expected {{"predictions": [...], "model_version": ...}}, got {str(answer)[:200]}')
    predictions = answer["predictions"]
    if len(predictions) != 1 or not isinstance(predictions[0], dict):
        raise CheckFailed(f"expected one prediction for one transaction, got {str(predictions)[:200]}")
    (row,) = predictions
    score = row.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise CheckFailed(f"score is not a finite number: {score!r}")
    if not 0.0 <= score <= 1.0:
        raise CheckFailed(f"score {score} is outside [0, 1]")
    if not isinstance(row.get("decision"), bool):
        raise CheckFailed(f"decision is not a boolean: {row.get('decision')!r}")
    if row.get("transaction_id") != transaction_id:
        raise CheckFailed(
            f"transaction_id {row.get('transaction_id')!r} is not the one sent ({transaction_id})"
        )
    version = answer.get("model_version")
    if not isinstance(version, str) or not version or version == "unknown":
        raise CheckFailed(f"no model version in the answer: {version!r}")
    return {"score": score, "decision": row["decision"], "model_version": version}
