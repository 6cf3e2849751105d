"""The serving models' errors: relearn's error model and, at the same time, KServe's own exceptions.

The model servers map :class:`relearn.errors.RelearnError` (one REST handler, one gRPC interceptor:
:mod:`relearn.serving.server`); being KServe's ``InvalidInput`` / ``ServerNotReady`` too, the same errors
keep their status where KServe's handlers answer alone (``--workers`` > 1) and for callers that catch
KServe's classes. ``RelearnError.__init__`` hands the message on to the KServe base (cooperative ``super``).
"""

from __future__ import annotations

from kserve import errors as kserve_errors

from relearn import errors


class InvalidInput(errors.InvalidRequest, kserve_errors.InvalidInput):
    """Bad input (400 / INVALID_ARGUMENT), the message naming the field (KServe's ``reason``)."""


class Unavailable(errors.Unavailable, kserve_errors.ServerNotReady):
    """A dependency (streaming state, predictor) failed or timed out (503 / UNAVAILABLE).

    KServe 0.21's gRPC interceptor reads ``reason``, which ServerNotReady lacks; without it a gRPC client
    would get UNKNOWN (AttributeError) instead of UNAVAILABLE.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)  # through RelearnError to ServerNotReady: "Server is not ready. <detail>"
        self.reason = self.error_msg
