"""One test in production at a time over the fraud traffic: an experiment or a canary, never both.

An experiment and a canary both split the same requests between model versions: a card the experiment
assigns to its control could be answered by the canary, and neither comparison would mean what it says. So
``experiment start`` is refused while a canary (or a shadow, which the controller turns into a canary once
it agrees) runs, and a canary or shadow start (``kubectl relearn canary|shadow start``, the pipeline's
deploy step) is refused while an experiment runs. Both checks only read; a refusal changes nothing.

Which store governs which traffic: locally the store under RELEARN_HOME (RELEARN_EXPERIMENT_STORE) and the
local router's state beside it; in the cluster the store's ConfigMap (RELEARN_EXPERIMENT_CONFIGMAP, which
the chart sets for the pipeline's deploy step) and the fraud InferenceService of the same namespace.
"""

from __future__ import annotations

from typing import Any

from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore


def refuse_during_canary(
    store: Any, *, cluster: bool, inference_service: str | None = None, state: Any = None
) -> None:
    """Refuse to start an experiment while a canary or a shadow runs on the traffic the store governs.

    The cluster's store (a :class:`relearn.experiments.kube_store.ConfigMapStore`) governs the fraud
    InferenceService in its namespace (``inference_service``, else RELEARN_ROLLOUT_INFERENCE_SERVICE); the
    local store the local router (``state``, else RELEARN_ROLLOUT_STATE, else ``<RELEARN_HOME>/rollout/``).

    Raises:
        ValueError: naming the canary (or shadow) and how to end it (nothing was changed).
    """
    from relearn.rollout.audit import rollout_dir
    from relearn.rollout.controller import ControllerSettings

    rollout = ControllerSettings()
    backend: Any
    if cluster:
        from relearn.rollout.kubernetes_backend import KubernetesBackend

        isvc = inference_service or rollout.inference_service
        backend = KubernetesBackend(store.namespace, isvc, api_client=store.api_client)
    else:
        from relearn.rollout.local_backend import LocalBackend

        backend = LocalBackend(state or rollout.state or rollout_dir() / "state.json")
    now = backend.state()
    if now.canary is not None:
        raise ValueError(
            f"canary {now.canary} is running at {now.canary_percent}% of the traffic: an experiment would "
            "split the same requests; promote or roll it back first (kubectl relearn promote|rollback)"
        )
    if now.shadow is not None:
        raise ValueError(
            f"shadow {now.shadow} is mirroring the traffic and becomes a canary once it agrees: stop it "
            "first (kubectl relearn shadow stop)"
        )


def governing_store(backend: Any) -> ExperimentStore | None:
    """The experiment store over the traffic ``backend`` rolls out on; None when the cluster has none.

    The Kubernetes backend reads the ConfigMap named by RELEARN_EXPERIMENT_CONFIGMAP with its own API
    client (unset: experiments are not installed, nothing to check); any other backend the local store.
    """
    from relearn.rollout.kubernetes_backend import KubernetesBackend

    settings = ExperimentSettings()
    if isinstance(backend, KubernetesBackend):
        if not settings.configmap:
            return None
        from relearn.experiments.kube_store import ConfigMapStore

        return ConfigMapStore(settings.configmap, api_client=backend.api.api_client)
    from relearn.experiments.store import default_store

    return ExperimentStore(default_store())


def running_experiment(backend: Any) -> str | None:
    """Why a canary or shadow may not start on ``backend`` now (a running experiment, named), else None."""
    store = governing_store(backend)
    running = [r for r in store.list() if r["status"] == "running"] if store else []
    if not running:
        return None
    r = running[0]
    return (
        f"experiment {r['name']!r} ({r.get('kind', 'ab')}) is running over traffic {r['traffic']!r}: a "
        "canary (or a shadow, which becomes one) would split the same requests; stop it first (kubectl "
        "relearn experiment stop "
        f"{r['name']} --reason ...) or promote its winner"
    )
