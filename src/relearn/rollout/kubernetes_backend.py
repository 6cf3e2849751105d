"""The Kubernetes rollout backend: KServe canary + Istio mirror, through the API server.

The Kubernetes backend acts exactly as the documented plain commands do::

    # canary: the new model URI plus the share of traffic for the latest revision
    kubectl patch isvc relearn-fraud --type merge -p \
      '{"spec":{"predictor":{"canaryTrafficPercent":10},"transformer":{"canaryTrafficPercent":10}}}'
    # promote: remove the field (the latest revision takes 100 %)
    kubectl patch isvc relearn-fraud --type merge -p \
      '{"spec":{"predictor":{"canaryTrafficPercent":null},"transformer":{"canaryTrafficPercent":null}}}'
    # roll back: 0 % for the latest revision (the previous rolled-out revision takes 100 %)
    kubectl patch isvc relearn-fraud --type merge -p \
      '{"spec":{"predictor":{"canaryTrafficPercent":0},"transformer":{"canaryTrafficPercent":0}}}'
    # pin: the stable revision loads a version, not an alias resolved again at each pod start
    # (the containers list with RELEARN_PREDICTOR_MODEL_URI=models:/relearn-fraud/3)
    kubectl patch isvc relearn-fraud --type merge -p '{"spec":{"predictor":{"containers":[...]}}}'
    # shadow: mirror a share of the requests to the shadow InferenceService (responses discarded)
    kubectl patch virtualservice relearn-shadow-mirror --type merge -p '{"spec":{"http":[...]}}'

Every patch is a JSON merge patch (``application/merge-patch+json``). Lists (containers, env, http routes)
are replaced whole by a merge patch, so the backend reads the object first and sends the full list.
The versions are recorded as annotations of the objects (``relearn.io/stable-version``, ...), because the
InferenceService itself only knows model URIs.
"""

from __future__ import annotations

import copy
from typing import Any

from relearn import kube
from relearn.rollout.backend import RolloutError, RolloutState, check_percent
from relearn.routing import SHADOW_SUFFIX

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VS_GROUP, VS_VERSION, VS_PLURAL = "networking.istio.io", "v1", "virtualservices"

ANN_STABLE = "relearn.io/stable-version"
ANN_CANARY = "relearn.io/canary-version"
ANN_STABLE_URI = "relearn.io/stable-model-uri"
ANN_SHADOW = "relearn.io/shadow-version"
MODEL_URI_ENV = "RELEARN_PREDICTOR_MODEL_URI"
# The explainer (when the InferenceService has one) holds its own copy of the model: it follows the predictor.
EXPLAINER_URI_ENV = "RELEARN_EXPLAINER_MODEL_URI"
COMPONENTS = ("predictor", "transformer")


def model_uri(model_name: str, version: str) -> str:
    """The MLflow URI of a registered version (``models:/<name>/<version>``)."""
    return f"models:/{model_name}/{version}"


def version_of_uri(uri: str | None) -> str | None:
    """The version (or alias) named by a ``models:/`` URI; the URI itself otherwise."""
    if not uri:
        return None
    if uri.startswith("models:/"):
        tail = uri[len("models:/") :]
        for sep in ("/", "@"):
            if sep in tail:
                return tail.split(sep, 1)[1]
    return uri


def alias_of_uri(uri: str | None, model_name: str) -> str | None:
    """The alias of a ``models:/<model_name>@<alias>`` URI; None for a version or another model's URI."""
    prefix = f"models:/{model_name}@"
    return uri[len(prefix) :] if uri and uri.startswith(prefix) else None


def _with_model_uri(
    containers: list[dict[str, Any]], uri: str, name: str = MODEL_URI_ENV
) -> list[dict[str, Any]]:
    """A copy of a component's containers with its model URI variable ``name`` set to ``uri``."""
    out = copy.deepcopy(containers)
    for container in out:
        if container.get("name") != "kserve-container":
            continue
        env = container.setdefault("env", [])
        for var in env:
            if var.get("name") == name:
                var.pop("valueFrom", None)
                var["value"] = uri
                break
        else:
            env.append({"name": name, "value": uri})
        return out
    raise RolloutError("the InferenceService component has no container named kserve-container")


def _model_patch(spec: dict[str, Any], uri: str) -> dict[str, Any]:
    """The spec patch that points the predictor, and the explainer if there is one, at ``uri``."""
    patch = {"predictor": {"containers": _with_model_uri(spec["predictor"].get("containers", []), uri)}}
    if "explainer" in spec:
        containers = spec["explainer"].get("containers", [])
        patch["explainer"] = {"containers": _with_model_uri(containers, uri, EXPLAINER_URI_ENV)}
    return patch


def _components(spec: dict[str, Any]) -> tuple[str, ...]:
    """The components a canary splits: predictor and transformer, and the explainer when present."""
    return (*COMPONENTS, "explainer") if "explainer" in spec else COMPONENTS


def _predictor_uri(isvc: dict[str, Any]) -> str | None:
    for container in isvc.get("spec", {}).get("predictor", {}).get("containers", []):
        if container.get("name") == "kserve-container":
            for var in container.get("env", []):
                if var.get("name") == MODEL_URI_ENV:
                    return var.get("value")
    return isvc.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")


class KubernetesBackend:
    """Canary through KServe's ``canaryTrafficPercent``, shadow through an Istio VirtualService mirror.

    Args:
        namespace: Namespace of the InferenceServices and the VirtualService.
        inference_service: Name of the fraud InferenceService (stable + canary).
        virtual_service: Name of the mirroring VirtualService (None: shadow actions are refused).
        shadow_service: Name of the shadow InferenceService.
        model_name: Registered model name used in ``models:/<name>/<version>``.
        api_client: A ``kubernetes.client.ApiClient`` (default: in-cluster config, else kubeconfig).
        route_name: Name of the VirtualService http route carrying the mirror (default: the first route).
    """

    def __init__(
        self,
        namespace: str,
        inference_service: str,
        *,
        virtual_service: str | None = None,
        shadow_service: str | None = None,
        model_name: str = "relearn-fraud",
        api_client: Any = None,
        route_name: str | None = None,
    ) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.isvc = inference_service
        self.vs = virtual_service
        self.shadow_isvc = shadow_service or f"{inference_service}{SHADOW_SUFFIX}"
        self.model_name = model_name
        self.route_name = route_name
        self.api = client.CustomObjectsApi(api_client or kube.api_client())

    # ----------------------------------------------------------------------------------------- API calls
    def _get_isvc(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, self.namespace, ISVC_PLURAL, name
        )

    def _patch_isvc(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, self.namespace, ISVC_PLURAL, name, body
        )

    def _get_vs(self) -> dict[str, Any]:
        if not self.vs:
            raise RolloutError(
                "no VirtualService configured (RELEARN_ROLLOUT_VIRTUAL_SERVICE): shadow is off"
            )
        return self.api.get_namespaced_custom_object(VS_GROUP, VS_VERSION, self.namespace, VS_PLURAL, self.vs)

    def _patch_vs(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.vs
        return self.api.patch_namespaced_custom_object(
            VS_GROUP, VS_VERSION, self.namespace, VS_PLURAL, self.vs, body
        )

    # ------------------------------------------------------------------------------------------- helpers
    def _route_index(self, vs: dict[str, Any]) -> int:
        routes = vs.get("spec", {}).get("http", [])
        if not routes:
            raise RolloutError(f"VirtualService {self.vs} has no http route")
        if self.route_name is None:
            return 0
        for i, route in enumerate(routes):
            if route.get("name") == self.route_name:
                return i
        raise RolloutError(f"VirtualService {self.vs} has no http route named {self.route_name}")

    def _shadow_host(self) -> str:
        # The shadow InferenceService is a RawDeployment (chart): its transformer's plain Service answers
        # Envoy's "<host>-shadow" mirror Host, which Knative's local gateway would not route.
        return f"{self.shadow_isvc}-transformer.{self.namespace}.svc.cluster.local"

    def _canary_patch(self, percent: int | None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        components = COMPONENTS if spec is None else _components(spec)
        return {"spec": {c: {"canaryTrafficPercent": percent} for c in components}}

    # ------------------------------------------------------------------------------------------- actions
    def state(self) -> RolloutState:
        """Read the InferenceService (and the VirtualService when configured)."""
        isvc = self._get_isvc(self.isvc)
        ann = isvc.get("metadata", {}).get("annotations") or {}
        predictor = isvc.get("spec", {}).get("predictor", {})
        canary = ann.get(ANN_CANARY)
        percent = predictor.get("canaryTrafficPercent")
        stable = ann.get(ANN_STABLE) or (version_of_uri(_predictor_uri(isvc)) if canary is None else None)
        shadow, mirror = None, 0.0
        if self.vs:
            vs = self._get_vs()
            route = vs["spec"]["http"][self._route_index(vs)]
            if route.get("mirror"):
                mirror = float((route.get("mirrorPercentage") or {"value": 100.0})["value"])
                shadow = (vs.get("metadata", {}).get("annotations") or {}).get(ANN_SHADOW)
        return RolloutState(
            stable=stable,
            canary=canary,
            canary_percent=int(percent) if canary is not None and percent is not None else 0,
            shadow=shadow if mirror > 0 else None,
            mirror_percent=mirror,
        )

    def start_canary(self, version: str, percent: int) -> RolloutState:
        """New predictor model URI + ``canaryTrafficPercent`` on the predictor and the transformer."""
        check_percent(percent)
        isvc = self._get_isvc(self.isvc)
        ann = isvc.get("metadata", {}).get("annotations") or {}
        if ann.get(ANN_CANARY):
            raise RolloutError(f"canary {ann[ANN_CANARY]} is running: promote or roll it back first")
        current_uri = _predictor_uri(isvc)
        stable = ann.get(ANN_STABLE) or version_of_uri(current_uri)
        body = self._canary_patch(percent, isvc["spec"])
        for component, patch in _model_patch(isvc["spec"], model_uri(self.model_name, version)).items():
            body["spec"][component].update(patch)
        body["metadata"] = {
            "annotations": {
                ANN_CANARY: version,
                ANN_STABLE: stable,
                ANN_STABLE_URI: ann.get(ANN_STABLE_URI) or current_uri,
            }
        }
        self._patch_isvc(self.isvc, body)
        return self.state()

    def set_canary_percent(self, percent: int) -> RolloutState:
        """Patch ``canaryTrafficPercent`` only."""
        check_percent(percent)
        if self.state().canary is None:
            raise RolloutError("no canary is running")
        self._patch_isvc(self.isvc, self._canary_patch(percent, self._get_isvc(self.isvc)["spec"]))
        return self.state()

    def promote(self) -> RolloutState:
        """Remove ``canaryTrafficPercent`` (merge patch with null); the canary becomes stable."""
        state = self.state()
        if state.canary is None:
            raise RolloutError("no canary to promote")
        body = self._canary_patch(None, self._get_isvc(self.isvc)["spec"])
        body["metadata"] = {
            "annotations": {
                ANN_STABLE: state.canary,
                ANN_STABLE_URI: model_uri(self.model_name, state.canary),
                ANN_CANARY: None,
            }
        }
        self._patch_isvc(self.isvc, body)
        return self.state()

    def rollback(self) -> RolloutState:
        """``canaryTrafficPercent: 0``: the previous rolled-out revision serves everything."""
        state = self.state()
        if state.canary is None:
            raise RolloutError("no canary to roll back")
        body = self._canary_patch(0, self._get_isvc(self.isvc)["spec"])
        body["metadata"] = {"annotations": {ANN_CANARY: None}}
        self._patch_isvc(self.isvc, body)
        return self.state()

    def start_shadow(self, version: str, percent: float) -> RolloutState:
        """Load ``version`` in the shadow InferenceService and mirror ``percent`` of the route to it."""
        check_percent(percent)
        vs = self._get_vs()
        shadow = self._get_isvc(self.shadow_isvc)
        containers = shadow["spec"]["predictor"].get("containers", [])
        self._patch_isvc(
            self.shadow_isvc,
            {
                "spec": {
                    "predictor": {
                        "containers": _with_model_uri(containers, model_uri(self.model_name, version))
                    }
                }
            },
        )
        routes = copy.deepcopy(vs["spec"]["http"])
        route = routes[self._route_index(vs)]
        route["mirror"] = {"host": self._shadow_host(), "port": {"number": 80}}
        route["mirrorPercentage"] = {"value": float(percent)}
        self._patch_vs({"metadata": {"annotations": {ANN_SHADOW: version}}, "spec": {"http": routes}})
        return self.state()

    def stop_shadow(self) -> RolloutState:
        """Remove the mirror from the route."""
        vs = self._get_vs()
        routes = copy.deepcopy(vs["spec"]["http"])
        route = routes[self._route_index(vs)]
        route.pop("mirror", None)
        route.pop("mirrorPercentage", None)
        self._patch_vs({"metadata": {"annotations": {ANN_SHADOW: None}}, "spec": {"http": routes}})
        return self.state()

    def _stable_uri(self, isvc: dict[str, Any]) -> str | None:
        """The model URI of the revision serving the stable route (None while a canary runs).

        After a rollback (``canaryTrafficPercent: 0``) the spec still names the rejected canary's URI and
        the previous rolled-out revision serves: its URI is the one recorded at canary start.
        """
        ann = isvc.get("metadata", {}).get("annotations") or {}
        if ann.get(ANN_CANARY):
            return None
        if isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent") == 0:
            return ann.get(ANN_STABLE_URI)
        return _predictor_uri(isvc)

    def stable_alias(self) -> str | None:
        """The alias in the stable revision's ``models:/<model_name>@<alias>`` URI (None: pinned/canary)."""
        return alias_of_uri(self._stable_uri(self._get_isvc(self.isvc)), self.model_name)

    def pin_stable(self, version: str) -> RolloutState:
        """Set the predictor's model URI to ``models:/<name>/<version>``: a new revision, same model.

        Safe only without a canary (refused then): the new revision takes 100 % of the traffic, so a leftover
        ``canaryTrafficPercent: 0`` of a rolled-back canary is removed with it (else the pinned revision
        would get no traffic). The version is recorded in the stable annotations.
        """
        isvc = self._get_isvc(self.isvc)
        ann = isvc.get("metadata", {}).get("annotations") or {}
        if ann.get(ANN_CANARY):
            raise RolloutError(
                f"canary {ann[ANN_CANARY]} is running: the stable revision cannot be pinned now"
            )
        uri = model_uri(self.model_name, version)
        spec = isvc["spec"]
        body: dict[str, Any] = {
            "spec": _model_patch(spec, uri),
            "metadata": {"annotations": {ANN_STABLE: version, ANN_STABLE_URI: uri}},
        }
        for component in _components(spec):
            if spec.get(component, {}).get("canaryTrafficPercent") is not None:
                body["spec"].setdefault(component, {})["canaryTrafficPercent"] = None
        self._patch_isvc(self.isvc, body)
        return self.state()
