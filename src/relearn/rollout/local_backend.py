"""The local rollout backend: the routing table the local router reads, written atomically.

:class:`LocalBackend` is the :class:`~relearn.rollout.backend.RolloutBackend` of local mode: it registers
each version's endpoints and sets the canary, shadow and stable routes in a JSON state file
(:class:`RouterState`) that :mod:`relearn.rollout.router` re-reads when it changes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relearn.rollout.backend import RolloutError, RolloutState, check_percent

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """Where one version is served: its REST base URL and its gRPC target."""

    rest: str | None = None
    grpc: str | None = None


@dataclass
class RouterState:
    """The routing table shared by the backend (writer) and the router (reader)."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    stable: str | None = None
    canary: str | None = None
    canary_percent: int = 0
    shadow: str | None = None
    mirror_percent: float = 0.0

    @classmethod
    def load(cls, path: Path) -> RouterState:
        """Read the state file (an empty state when it does not exist yet)."""
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        raw["endpoints"] = {v: Endpoint(**e) for v, e in raw.get("endpoints", {}).items()}
        return cls(**raw)

    def save(self, path: Path) -> None:
        """Write atomically (temporary file + rename): the router never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "endpoints": {v: vars(e) for v, e in self.endpoints.items()},
            "stable": self.stable,
            "canary": self.canary,
            "canary_percent": self.canary_percent,
            "shadow": self.shadow,
            "mirror_percent": self.mirror_percent,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)

    def public(self) -> RolloutState:
        """The backend-neutral view."""
        return RolloutState(
            stable=self.stable,
            canary=self.canary,
            canary_percent=self.canary_percent if self.canary else 0,
            shadow=self.shadow if self.mirror_percent > 0 else None,
            mirror_percent=self.mirror_percent if self.shadow else 0.0,
        )


class LocalBackend:
    """The rollout backend of local mode: edits the state file of a running :func:`serve` router.

    Versions must be registered first (:meth:`register`) with the endpoints of the servers that load them.

    Args:
        state_path: The router's state file.
    """

    def __init__(self, state_path: Path | str) -> None:
        self.path = Path(state_path)

    def _update(self, fn: Any) -> RolloutState:
        state = RouterState.load(self.path)
        fn(state)
        state.save(self.path)
        return state.public()

    def _known(self, state: RouterState, version: str) -> None:
        if version not in state.endpoints:
            raise RolloutError(
                f"version {version} has no registered endpoints: kubectl relearn --backend local register "
                f"{version} --rest URL --grpc HOST:PORT"
            )

    def register(self, version: str, *, rest: str | None = None, grpc: str | None = None) -> None:
        """Record where ``version`` is served; the first registered version becomes the stable one."""

        def fn(s: RouterState) -> None:
            s.endpoints[version] = Endpoint(rest=rest, grpc=grpc)
            s.stable = s.stable or version

        self._update(fn)

    def state(self) -> RolloutState:
        """The current versions and shares."""
        return RouterState.load(self.path).public()

    def start_canary(self, version: str, percent: int) -> RolloutState:
        """Route ``percent`` of the requests to ``version``."""
        check_percent(percent)

        def fn(s: RouterState) -> None:
            self._known(s, version)
            if s.canary:
                raise RolloutError(f"canary {s.canary} is running: promote or roll it back first")
            s.canary, s.canary_percent = version, percent

        return self._update(fn)

    def set_canary_percent(self, percent: int) -> RolloutState:
        """Change the canary's share."""
        check_percent(percent)

        def fn(s: RouterState) -> None:
            if not s.canary:
                raise RolloutError("no canary is running")
            s.canary_percent = percent

        return self._update(fn)

    def promote(self) -> RolloutState:
        """The canary becomes the stable version."""

        def fn(s: RouterState) -> None:
            if not s.canary:
                raise RolloutError("no canary to promote")
            s.stable, s.canary, s.canary_percent = s.canary, None, 0

        return self._update(fn)

    def rollback(self) -> RolloutState:
        """All traffic back to the stable version."""

        def fn(s: RouterState) -> None:
            if not s.canary:
                raise RolloutError("no canary to roll back")
            s.canary, s.canary_percent = None, 0

        return self._update(fn)

    def start_shadow(self, version: str, percent: float) -> RolloutState:
        """Mirror ``percent`` of the requests to ``version``."""
        check_percent(percent)

        def fn(s: RouterState) -> None:
            self._known(s, version)
            s.shadow, s.mirror_percent = version, float(percent)

        return self._update(fn)

    def stop_shadow(self) -> RolloutState:
        """Stop mirroring."""

        def fn(s: RouterState) -> None:
            s.shadow, s.mirror_percent = None, 0.0

        return self._update(fn)

    def stable_alias(self) -> str | None:
        """None: the local router's state names versions, never registry aliases."""
        return None

    def pin_stable(self, version: str) -> RolloutState:
        """The local equivalent: ``version`` (registered) serves the stable route; refused with a canary."""

        def fn(s: RouterState) -> None:
            self._known(s, version)
            if s.canary:
                raise RolloutError(f"canary {s.canary} is running: the stable version cannot be pinned now")
            s.stable = version

        return self._update(fn)
