"""The rollout backend a command or the controller runs on: the cluster's objects or the local router."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.rollout.audit import rollout_dir
from relearn.rollout.backend import RolloutBackend
from relearn.rollout.kubernetes_backend import KubernetesBackend
from relearn.rollout.local_backend import LocalBackend


class RolloutTarget(BaseSettings):
    """What a rollout acts on and where it records (environment: RELEARN_ROLLOUT_<OPTION>).

    The controller's settings and ``kubectl relearn``'s shared options both derive from it.
    """

    model_config = SettingsConfigDict(env_prefix="RELEARN_ROLLOUT_", extra="ignore")

    backend: Literal["kubernetes", "local"] = Field("kubernetes", description="Where to act.")
    namespace: str = Field("default", description="Namespace of the InferenceService.")
    inference_service: str = Field("relearn-fraud", description="The fraud InferenceService.")
    virtual_service: str | None = Field(None, description="The mirroring VirtualService.")
    shadow_service: str | None = Field(None, description="The shadow InferenceService.")
    model_name: str = Field("relearn-fraud", description="Registered model name.")
    state: Path | None = Field(None, description="Local router state file (backend local).")
    audit_log: Path | None = Field(None, description="Audit JSONL file; default <RELEARN_HOME>/rollout/.")


def make_backend(cfg: Any) -> RolloutBackend:
    """The backend chosen by ``cfg.backend``: the controller's settings or ``kubectl relearn``'s options.

    ``cfg`` provides the fields of :class:`RolloutTarget` (backend, state, namespace, inference_service,
    virtual_service, shadow_service, model_name).
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
