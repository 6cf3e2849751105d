"""The rollout backend interface: who serves what (:class:`RolloutState`) and the actions on it.

Two implementations: :class:`relearn.rollout.kubernetes_backend.KubernetesBackend` (KServe canary +
Istio mirror) and :class:`relearn.rollout.local_backend.LocalBackend` (the local router's table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from relearn.errors import InvalidRequest


class RolloutError(InvalidRequest, RuntimeError):
    """An action that does not fit the current state (e.g. promote without a canary).

    A refused request, not a failure: 409 Conflict / FAILED_PRECONDITION (the state must change first).
    """

    status = 409
    grpc_code = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class RolloutState:
    """Who serves what: the stable, canary and shadow versions and their shares of the traffic.

    Attributes:
        stable: Version serving the stable route (None when unknown).
        canary: Version of the canary (None when there is none).
        canary_percent: Percent of the requests routed to the canary (0 without a canary).
        shadow: Version receiving mirrored requests (None when there is none).
        mirror_percent: Percent of the requests mirrored to the shadow (0 without a shadow).
    """

    stable: str | None = None
    canary: str | None = None
    canary_percent: int = 0
    shadow: str | None = None
    mirror_percent: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


@runtime_checkable
class RolloutBackend(Protocol):
    """What the CLI and the controller need from a cluster (Kubernetes) or from the local router."""

    def state(self) -> RolloutState:
        """The current versions and traffic shares."""
        ...

    def start_canary(self, version: str, percent: int) -> RolloutState:
        """Route ``percent`` of the traffic to ``version``, the rest to the stable version."""
        ...

    def set_canary_percent(self, percent: int) -> RolloutState:
        """Change the canary's share (the step schedule of the analysis)."""
        ...

    def promote(self) -> RolloutState:
        """Make the canary the stable version (100 %)."""
        ...

    def rollback(self) -> RolloutState:
        """Send all traffic back to the stable version."""
        ...

    def start_shadow(self, version: str, percent: float) -> RolloutState:
        """Mirror ``percent`` of the requests to ``version`` (its responses are discarded)."""
        ...

    def stop_shadow(self) -> RolloutState:
        """Stop mirroring."""
        ...

    def stable_alias(self) -> str | None:
        """The registry alias (e.g. ``champion``) the stable revision loads at each pod start, if any.

        None when the stable revision pins a version, or while a canary runs (nothing may be pinned then).
        """
        ...

    def pin_stable(self, version: str) -> RolloutState:
        """Make the stable revision load ``version`` itself instead of an alias (no canary may run)."""
        ...


def check_percent(percent: float, *, upper: int = 100) -> None:
    """Reject shares outside 0..upper."""
    if not 0 <= percent <= upper:
        raise ValueError(f"percent must be within 0..{upper}, got {percent}")
