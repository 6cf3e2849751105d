"""Serving side of an experiment: the transformer assigns each row its arm, the router routes by arm.

Only the transformer sees ``user_id`` (the predictor gets tensors), so it assigns the sticky arm
(:func:`relearn.experiments.assignment.assign_many`, salt of the running experiment) and sends each arm's
rows in their own ``ModelInfer`` call with ``x-relearn-arm: <arm>`` metadata; the local router sends a
call carrying that header to the arm's model version, and the predictor answering names its
``model_version`` in the response its payload logger posts, which the drift detector keeps with every
score. So the arm is recorded with every prediction, and no replica or restart can move a card: the arm
depends only on (salt, user_id, split) read from the store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The headers and arm → version rule are the routing protocol's (re-exported for this package's callers).
from relearn.routing import ARM_HEADER as ARM_HEADER
from relearn.routing import EXPERIMENT_HEADER as EXPERIMENT_HEADER
from relearn.routing import model_version as model_version


def running_experiment() -> RunningExperiment:
    """The transformer's arm assigner (its default ``arm_assigner``): the store's running experiment.

    The running experiment's arm shares (a bandit's change) go out on the server's /metrics.
    """
    from relearn.experiments.exporter import default_metrics
    from relearn.experiments.store import default_store

    return RunningExperiment(default_store(), metrics=default_metrics())


class RunningExperiment:
    """The running experiment over one traffic, re-read from the store file when it changes (one stat).

    A :class:`relearn.routing.ArmAssigner`: the transformer calls :meth:`arms` on every batch.

    Args:
        path: The experiment store (:class:`relearn.experiments.store.ExperimentStore`'s JSON file).
        traffic: The traffic this server's requests belong to.
    """

    def __init__(self, path: Path | str, traffic: str = "fraud", metrics: Any = None) -> None:
        self.path = Path(path)
        self.traffic = traffic
        self.metrics = metrics  # an ExperimentMetrics: the routing shares, updated on every re-read
        self._stamp: tuple[int, int] | None = None
        self._current: tuple[str, str, Any] | None = None  # (name, salt, Split)

    def current(self) -> tuple[str, str, Any] | None:
        """(name, salt, split) of the running experiment over the traffic, or None.

        A bandit's split is its current :class:`relearn.experiments.assignment.Shares`.
        """
        from relearn.experiments.assignment import Shares, Split

        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None and self.metrics is not None:
                self.metrics.update_routing(None)
            self._stamp, self._current = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:  # the store is replaced atomically: a read sees a whole file
            running = [
                r
                for r in json.loads(self.path.read_text()).values()
                if r["status"] == "running" and r["traffic"] == self.traffic
            ]
            self._current = None
            if running:
                r = running[0]
                split = Shares.of(r["shares"]) if r.get("shares") else Split.of(r["split"])
                self._current = (r["name"], r["salt"], split)
            self._stamp = stamp
            if self.metrics is not None:
                self.metrics.update_routing(running[0] if running else None)
        return self._current

    def arms(self, user_ids: Sequence[str]) -> tuple[str, Any] | None:
        """(experiment name, arm of each row) for a batch's ``user_id`` column, or None without experiment."""
        from relearn.experiments.assignment import assign_many

        current = self.current()
        if current is None:
            return None
        name, salt, split = current
        return name, assign_many(user_ids, salt, split)
