"""The rollout backend a command or the controller runs on: the cluster's objects or the local router."""

from __future__ import annotations

from typing import Any

from relearn.rollout.audit import rollout_dir
from relearn.rollout.backend import RolloutBackend
from relearn.rollout.kubernetes_backend import KubernetesBackend
from relearn.rollout.local_backend import LocalBackend


def make_backend(cfg: Any) -> RolloutBackend:
    """The backend chosen by ``cfg.backend``: the controller's settings or ``kubectl relearn``'s options.

    ``cfg`` provides backend, state, namespace, inference_service, virtual_service, shadow_service and
    model_name.
    """
    if cfg.backend == "local":
        return LocalBackend(cfg.state or rollout_dir() / "state.json")
    return KubernetesBackend(
        cfg.namespace,
        cfg.inference_service,
        virtual_service=cfg.virtual_service,
        shadow_service=cfg.shadow_service,
        model_name=cfg.model_name,
    )
