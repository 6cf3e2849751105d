"""relearn's one error model: each error carries its HTTP status, gRPC status code and metrics outcome.

Raising one imports nothing (the drift detector's environment has no grpc, the pipeline steps no web
framework): :func:`rest_handler` and :func:`grpc_abort` import Starlette and grpc when they run. Servers
map every :class:`RelearnError` the same way: REST ``status`` with :meth:`RelearnError.body`, gRPC
``grpc_code`` with the message, ``relearn_*_requests_total{outcome}`` with :func:`outcome_of`.

Bodies: ``{"error": <message>}`` (the open inference protocol's), or ``{"error": <code>, "detail":
<message>}`` for an error with a bounded ``code`` (the drift detector's, whose codes are its rejected
counter's labels).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class RelearnError(Exception):
    """The base of relearn's errors: an internal error unless a subclass says otherwise.

    Args:
        message: What went wrong, naming the field or setting at fault.
        code: A bounded label (a metric label, the body's ``error``); default: none.
        status: The HTTP status, when this error's differs from its class's.
    """

    status = 500
    grpc_code = "INTERNAL"  # a grpc.StatusCode member's name (grpc is not imported here)
    outcome = "error"  # the requests counter's outcome label

    def __init__(self, message: str = "", *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        """The JSON body of a REST answer."""
        if self.code is None:
            return {"error": str(self)}
        return {"error": self.code, "detail": str(self)}


class InvalidRequest(RelearnError):
    """The caller's input is wrong (400 / INVALID_ARGUMENT); the message names the field."""

    status = 400
    grpc_code = "INVALID_ARGUMENT"
    outcome = "invalid"


class Unavailable(RelearnError):
    """A dependency failed or timed out (503 / UNAVAILABLE): retrying later may succeed."""

    status = 503
    grpc_code = "UNAVAILABLE"
    outcome = "unavailable"


class NotFound(RelearnError):
    """What the request names does not exist (404 / NOT_FOUND): an unknown model, say."""

    status = 404
    grpc_code = "NOT_FOUND"
    outcome = "invalid"


class StepFailed(InvalidRequest):
    """Bad input data: the step stops the run with this readable message instead of a stack trace."""


def outcome_of(error: BaseException) -> str:
    """The requests counter's outcome of a failed request: the error's own, else ``error``."""
    return error.outcome if isinstance(error, RelearnError) else "error"


def report(error: RelearnError, **where: Any) -> None:
    """Log a request's error: a client's (4xx) as one WARNING line, a server's with its traceback."""
    extra = {**where, "status": error.status, "code": error.grpc_code, "error": str(error)}
    if error.status < 500:
        log.warning("client error", extra=extra)
    else:
        log.error("server error", extra=extra, exc_info=error)


async def rest_handler(request: Any, error: RelearnError) -> Any:
    """The Starlette/FastAPI exception handler of :class:`RelearnError`: its status and body."""
    from starlette.responses import JSONResponse

    report(error, path=request.url.path)
    return JSONResponse(error.body(), status_code=error.status)


async def grpc_abort(context: Any, error: RelearnError, method: str = "") -> None:
    """End a gRPC call with the error's status code and message (``context.abort`` raises)."""
    import grpc

    report(error, method=method)
    await context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))
