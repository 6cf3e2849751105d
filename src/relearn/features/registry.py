"""Feast's remote (gRPC) registry with a client-side snapshot of the project's definitions.

The chart serves the registry with ``feast serve_registry``; every Feast client of a release (KFP run pods
in another namespace, the transformers) reaches it through ``RELEARN_FEAST_REGISTRY=grpc://<host>:<port>``
(:func:`relearn.features.store.registry_config`). This module keeps a transformer's lookups off the network.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from feast import Entity, FeatureStore
from feast.base_feature_view import BaseFeatureView
from feast.errors import FeatureViewNotFoundException
from feast.infra.registry.base_registry import BaseRegistry
from feast.infra.registry.remote import RemoteRegistry, RemoteRegistryConfig
from feast.permissions.auth_model import AuthConfig

log = logging.getLogger(__name__)


@dataclass
class _Snapshot:
    """One project's entities and feature views as the registry server listed them (protos, class)."""

    taken: float
    entities: list[Any]
    views: dict[str, tuple[type[BaseFeatureView], Any]]


class SnapshotRemoteRegistry(RemoteRegistry):
    """Feast's remote (gRPC) registry whose cached lookups read a snapshot of the project.

    Feast's ``RemoteRegistry`` sends every lookup to the server, also those Feast allows to be cached: each
    ``get_online_features`` would cost three round trips (``ListEntities``, ``GetAnyFeatureView`` per view)
    and fail while the registry server restarts. Here the lookups with ``allow_cache=True`` read a snapshot
    of the project's entities and feature views (two listing calls), as Feast's file registry reads its
    cached proto: renewed after ``cache_ttl_seconds`` (0: never) or when a feature view is missing from it;
    a failed renewal keeps the last snapshot. Each lookup builds fresh objects from the snapshot's protos
    (callers modify what they get). Writes (apply, materialization) and uncached reads go to the server.
    """

    def __init__(self, config: RemoteRegistryConfig, project: str, auth_config: AuthConfig) -> None:
        super().__init__(config, project, None, auth_config)
        self._ttl = config.cache_ttl_seconds
        self._snapshots: dict[str, _Snapshot] = {}

    def _snapshot(self, project: str, renew: bool = False) -> _Snapshot:
        now = time.monotonic()
        last = self._snapshots.get(project)
        if last is not None and not renew and (self._ttl <= 0 or now - last.taken <= self._ttl):
            return last
        try:
            entities = [e.to_proto() for e in super().list_entities(project, allow_cache=True)]
            views = super().list_all_feature_views(project, allow_cache=True)
        except grpc.RpcError as exc:
            if last is None:
                raise
            log.warning("registry snapshot not renewed, keeping the last one", extra={"error": str(exc)})
            last.taken = now
            return last
        snapshot = _Snapshot(now, entities, {v.name: (type(v), v.to_proto()) for v in views})
        self._snapshots[project] = snapshot
        return snapshot

    def list_entities(
        self, project: str, allow_cache: bool = False, tags: dict[str, str] | None = None
    ) -> list[Entity]:
        """The project's entities; from the snapshot when ``allow_cache``."""
        if not allow_cache or tags:
            return super().list_entities(project, allow_cache, tags)
        return [Entity.from_proto(p) for p in self._snapshot(project).entities]

    def get_any_feature_view(self, name: str, project: str, allow_cache: bool = False) -> BaseFeatureView:
        """A feature view of any kind; from the snapshot when ``allow_cache``."""
        if not allow_cache:
            return super().get_any_feature_view(name, project, allow_cache)
        views = self._snapshot(project).views
        if name not in views:  # applied after the snapshot was taken?
            views = self._snapshot(project, renew=True).views
        if name not in views:
            raise FeatureViewNotFoundException(name, project)
        cls, proto = views[name]
        return cls.from_proto(proto)


class SnapshotFeatureStore(FeatureStore):
    """A FeatureStore whose remote registry is a :class:`SnapshotRemoteRegistry`."""

    def _create_registry(self) -> BaseRegistry:
        config = self.config.registry
        if isinstance(config, RemoteRegistryConfig):
            return SnapshotRemoteRegistry(config, self.config.project, self.config.auth_config)
        return super()._create_registry()
