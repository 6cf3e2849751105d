"""Structured (JSON lines) logging for every relearn process, and progress bars that suit a log file."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came in through ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Route relearn's loggers to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("relearn")
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False


NON_TTY_REFRESH_SECONDS = 30.0


def progress_bar(iterable: Any = None, **options: Any) -> Any:
    """A tqdm bar that redraws at most every 30 s where its output is no terminal (CI, ``make > file``).

    On a terminal the bar is one live line; elsewhere each redraw is appended to the log, so frequent ones
    would bury everything else in it.
    """
    from tqdm.auto import tqdm  # a widget in a notebook

    out = options.setdefault("file", sys.stderr)
    if not (hasattr(out, "isatty") and out.isatty()):
        options.setdefault("mininterval", NON_TTY_REFRESH_SECONDS)
    return tqdm(iterable, **options)
