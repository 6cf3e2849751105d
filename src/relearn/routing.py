"""The routing protocol between transformer, router and servers, in one place that imports nothing.

* ``x-relearn-arm`` / ``x-relearn-experiment`` (:data:`ARM_HEADER`, :data:`EXPERIMENT_HEADER`): the
  transformer marks each experiment arm's predictor call; the router sends it to the arm's model version
  (:func:`model_version`).
* ``x-relearn-route`` (:data:`ROUTE_HEADER`): the local router tells an upstream (and its client) which
  route a request took (``stable``, ``canary``, ``experiment/<arm>``).
* Envoy's mirror Host (:data:`SHADOW_SUFFIX`, :func:`shadow_host`): Istio inserts ``-shadow`` into the Host
  / ``:authority`` of a mirrored request, and the local router does the same, so a server tells mirrored
  traffic from live traffic (:func:`track_of`, its ``SERVING_TRACKS``); the shadow InferenceService is
  ``<inference service>-shadow``.
* The roles a logged prediction belongs to (:data:`TRACKS`): ``stable``, ``canary`` and ``shadow``.
* :class:`ArmAssigner`: what the transformer needs from a running experiment (the experiments package
  implements it; serving never imports that package).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

ARM_HEADER = "x-relearn-arm"  # the experiment arm of a call (transformer → router)
EXPERIMENT_HEADER = "x-relearn-experiment"  # its experiment's name, for the upstream's logs
ROUTE_HEADER = "x-relearn-route"  # the local router's route of a request (stable, canary, experiment/<arm>)
SHADOW_SUFFIX = "-shadow"  # Envoy's mirror Host suffix, and the shadow InferenceService's name suffix
TRACKS = ("stable", "canary", "shadow")  # the roles of logged predictions (the drift detector's tracks)
SERVING_TRACKS = ("primary", "mirror")  # live or mirrored traffic (the serving metrics' ``track``)


class ArmAssigner(Protocol):
    """The running experiment as the transformer sees it."""

    def arms(self, user_ids: Sequence[str]) -> tuple[str, Any] | None:
        """(experiment name, each row's arm) for a batch's ``user_id`` column; None: no experiment."""


def load_assigner(factory: str) -> ArmAssigner | None:
    """The arm assigner ``module:function`` builds (called with no arguments); None for ``""``.

    The transformer is wired to the experiments package by this name (a setting), not by an import: serving
    sits below experiments, and a transformer without experiments needs nothing of that package.
    """
    if not factory:
        return None
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)()


def model_version(arm: str) -> str:
    """The model version an arm names: ``"7"`` and ``"v7"`` are version 7; other names are kept."""
    return arm[1:] if arm[:1] == "v" and arm[1:].isdigit() else arm


def _split_port(host: str) -> tuple[str, str]:
    """``(name, ":port" or "")`` of a Host value (an IPv6 literal keeps its brackets)."""
    name, sep, port = host.rpartition(":")
    return (name, sep + port) if sep and port.isdigit() else (host, "")


def shadow_host(host: str) -> str:
    """The Host / ``:authority`` Envoy gives a mirrored request: ``-shadow`` before the port, if any."""
    name, port = _split_port(host)
    return f"{name}{SHADOW_SUFFIX}{port}"


def track_of(headers: Mapping[str, str] | None) -> str:
    """``mirror`` for a request sent to a shadow host (see :func:`shadow_host`), else ``primary``.

    REST servers read the Host header. Python gRPC servers do not expose ``:authority``, so the local router
    also sends a mirrored call's authority as ``host`` metadata, which they do see.
    """
    headers = headers or {}
    host = headers.get("host") or headers.get(":authority") or ""
    return "mirror" if _split_port(host)[0].endswith(SHADOW_SUFFIX) else "primary"
