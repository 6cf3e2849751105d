"""Append-only audit trail of rollout actions: which version served when, and why each decision was taken."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STARTS = ("canary-start", "shadow-to-canary")  # the actions that start a canary


def rollout_dir() -> Path:
    """Where local rollout state lives by default: ``<RELEARN_HOME>/rollout``."""
    from relearn.settings import RelearnSettings

    return RelearnSettings().home / "rollout"


def audit_log_for(configured: Path | str | None) -> AuditLog:
    """The configured audit trail, or the default ``<RELEARN_HOME>/rollout/audit.jsonl``."""
    return AuditLog(configured or rollout_dir() / "audit.jsonl")


class AuditLog:
    """One JSON object per line, appended with a single ``write`` on an ``O_APPEND`` descriptor.

    Args:
        path: The JSONL file (created with its folder on first append).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def append(self, action: str, *, actor: str, reason: str = "", **fields: Any) -> dict[str, Any]:
        """Record one action (``fields`` e.g. version, percent, the resulting state)."""
        entry = {"time": datetime.now(UTC).isoformat(), "action": action, "actor": actor, "reason": reason}
        entry.update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return entry

    def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The recorded actions, oldest first (the last ``limit`` when given)."""
        if not self.path.exists():
            return []
        lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
        if limit is not None:
            lines = lines[-limit:] if limit > 0 else []
        return [json.loads(ln) for ln in lines]

    def canary_started(self, version: str) -> float | None:
        """When canary ``version`` started (epoch s), or None when the trail does not know it.

        Its newest start entry, else its first entry since the last promotion or rollback (a canary
        started without an audit entry, e.g. by hand on the backend).
        """
        first = None
        for entry in reversed(self.entries()):
            if entry.get("action") in ("promote", "rollback"):
                break
            if entry.get("version") != version:
                continue
            first = entry["time"]
            if entry.get("action") in STARTS:
                break
        return None if first is None else datetime.fromisoformat(first).timestamp()
