"""The experiment store in the cluster: a ConfigMap the fraud transformers mount, and the router's routes.

The chart renders ``<fraud>-experiments`` (key ``experiments.json``, the same JSON as the local store's
file) and mounts it into every fraud transformer as ``RELEARN_EXPERIMENT_STORE``; the kubelet swaps the
mounted file atomically, so every replica re-reads a whole store. ``kubectl relearn experiment
--configmap NAMESPACE/NAME`` keeps the store there: each change is a read-modify-write sent as a JSON merge
patch carrying the ``resourceVersion`` read, so the API server refuses it (409) if another change came in
between, and the change is re-applied on the new content. The calls are exactly those the chart's
experiments Role allows: get and patch on that ConfigMap, get on the experiment router.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from relearn.experiments.routing import model_version
from relearn.experiments.store import ExperimentStore, Record

KEY = "experiments.json"
MERGE = "application/merge-patch+json"
VS_GROUP, VS_VERSION, VS_PLURAL = "networking.istio.io", "v1", "virtualservices"
ATTEMPTS = 5  # conflicting writers: a few re-reads settle it, more means something is wrong


def _split_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"expected NAMESPACE/NAME for the store's ConfigMap, got {ref!r}")
    return namespace, name


class ConfigMapStore(ExperimentStore):
    """:class:`ExperimentStore` on a ConfigMap (same records, same refusals).

    Args:
        ref: ``NAMESPACE/NAME`` of the ConfigMap (the chart's ``<fraud.name>-experiments``).
        api_client: A ``kubernetes.client.ApiClient`` (default: in-cluster config, else kubeconfig).
        local_dir: Where the audit trail goes by default (the local store's folder).
    """

    def __init__(self, ref: str, api_client: Any = None, local_dir: Path | None = None) -> None:
        from kubernetes import client

        from relearn import kube

        self.namespace, self.name = _split_ref(ref)
        self.api_client = api_client or kube.api_client()
        self.core = client.CoreV1Api(self.api_client)
        # ExperimentStore.path: only its parent is used (the audit trail's default folder).
        self.path = (local_dir or Path(".")) / f"{self.name}.json"

    def _get(self) -> tuple[dict[str, Record], str | None]:
        cm = self.core.read_namespaced_config_map(self.name, self.namespace)
        return json.loads((cm.data or {}).get(KEY) or "{}"), cm.metadata.resource_version

    def _read(self) -> dict[str, Record]:
        return self._get()[0]

    def _patch(self, body: dict[str, Any]) -> None:
        # The generated patch_namespaced_config_map would send application/json-patch+json for any body
        # (kubernetes 30: the first type it lists); a merge patch needs its own Content-Type.
        self.api_client.call_api(
            f"/api/v1/namespaces/{self.namespace}/configmaps/{self.name}",
            "PATCH",
            header_params={"Content-Type": MERGE, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            response_type="object",
            _return_http_data_only=True,
        )

    def _change(self, fn: Callable[[dict[str, Record]], Record]) -> Record:
        from kubernetes.client.exceptions import ApiException

        for _ in range(ATTEMPTS):
            data, version = self._get()
            record = fn(data)  # raises on bad input: nothing was sent
            body = {
                "metadata": {"resourceVersion": version},
                "data": {KEY: json.dumps(data, indent=2, sort_keys=True)},
            }
            try:
                self._patch(body)
                return record
            except ApiException as err:
                if err.status != 409:
                    raise
        raise RuntimeError(f"ConfigMap {self.namespace}/{self.name} kept changing under {ATTEMPTS} attempts")


def check_routes(api_client: Any, namespace: str, router: str, arms: Iterable[str]) -> None:
    """Refuse arms the experiment router cannot route (no ``arm-<version>`` route: no InferenceService).

    Raises:
        ValueError: naming the arms without a route and how to add them (nothing was changed).
    """
    from kubernetes import client

    vs = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        VS_GROUP, VS_VERSION, namespace, VS_PLURAL, router
    )
    routes = {r.get("name") for r in vs.get("spec", {}).get("http", [])}
    missing = [arm for arm in arms if f"arm-{model_version(arm)}" not in routes]
    if missing:
        raise ValueError(
            f"no route for arm(s) {missing} in VirtualService {namespace}/{router}: add their versions to "
            "the chart's experiments.versions (each gets its own InferenceService) and upgrade first"
        )
