"""Distributed training in a cluster: a PyTorchJob (kubeflow.org/v1) that the train step submits and awaits.

The Kubeflow Training Operator runs one ``Master`` and ``workers - 1`` ``Worker`` pods and gives each the
``torch.distributed`` environment (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``); every pod
runs ``python -m relearn.model.distributed`` in the pipeline image. Data and results travel through the
MLflow run the step opened, which every pod can reach: the step logs the training set under ``inputs/``,
each pod downloads it and reads its shard, rank 0 logs the model under ``trained_model/``, and the step
downloads it once the job has succeeded. The step acts as these commands would::

    kubectl create -f pytorchjob.yaml
    kubectl wait pytorchjob/relearn-train-<run id> --for=condition=Succeeded   # or Failed: stop

RBAC: ``create``, ``get`` and ``delete`` on ``pytorchjobs`` in the job's namespace
(``charts/relearn/templates/pytorchjob-role.yaml``). The pods get no API token.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn import kube
from relearn.model.distributed import MODEL_ARTIFACT, TrainingFailed, WorkerOptions
from relearn.settings import RelearnSettings

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"  # the Training Operator finds the training container by this name
INPUT_ARTIFACT = "inputs"
POD_MODEL_DIR = Path("/tmp/relearn/model")
UID = 10001  # the pipeline image's user (components/Dockerfile)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PyTorchJobSettings(BaseSettings):
    """How the train step runs a PyTorchJob (environment: ``RELEARN_TRAINING_*``)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_TRAINING_", extra="ignore")

    namespace: str | None = Field(None, description="Namespace of the job; default: the step pod's own.")
    config_map: str | None = Field(
        None,
        description="ConfigMap whose keys become the pods' environment (envFrom), e.g. relearn's settings.",
    )
    service_account: str | None = Field(
        None,
        description="Service account of the pods (e.g. for object-store access); no API token is mounted.",
    )
    cpu: str = Field("1", description="CPU request and limit of each pod (one process per pod).")
    memory: str = Field("4Gi", description="Memory request and limit of each pod.")
    timeout_seconds: int = Field(
        7200, ge=1, description="Longest the job may run (activeDeadlineSeconds); then the step deletes it."
    )
    poll_seconds: float = Field(5.0, gt=0, description="Time between two reads of the job's status.")
    ttl_seconds_after_finished: int = Field(
        86400, ge=0, description="How long a finished job (and its pods' logs) is kept."
    )


def job_name(run_id: str) -> str:
    """One job per MLflow run: ``relearn-train-<run id>`` (its pod names stay within 63 characters)."""
    return f"relearn-train-{run_id}"


def render(
    workers: int,
    options: WorkerOptions,
    *,
    image: str,
    namespace: str,
    settings: PyTorchJobSettings,
    env: dict[str, str] | None = None,
    owner: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The PyTorchJob: one Master and ``workers - 1`` Worker pods, each running one training process.

    Args:
        workers: Training processes (pods) in all.
        options: What every process runs (paths as the pods see them).
        image: The pipeline image (it holds relearn and torch).
        namespace: Namespace of the job.
        settings: Resources, timeout, service account, ConfigMap.
        env: Environment of the training container (relearn's settings as the step sees them).
        owner: ``{"name", "uid"}`` of the step's pod: the job is deleted with it.
    """
    labels = {
        "app.kubernetes.io/name": "relearn",
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": "relearn",
        "relearn.io/mlflow-run-id": options.run_id,
    }
    resources = {"cpu": settings.cpu, "memory": settings.memory}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "relearn.model.distributed"],
        "args": options.cli_args(),
        "env": [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
        "resources": {"requests": resources, "limits": resources},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # the download, the model, torch's files
    }
    if settings.config_map:
        container["envFrom"] = [{"configMapRef": {"name": settings.config_map}}]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # training needs MLflow, not the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    # OnFailure restarts a pod that started before the master's address resolved; a failure during training
    # fails the job once backoffLimit restarts are used up.
    replica = {"restartPolicy": "OnFailure", "template": {"metadata": {"labels": labels}, "spec": pod}}
    replicas = {"Master": {"replicas": 1, **replica}}
    if workers > 1:
        replicas["Worker"] = {"replicas": workers - 1, **replica}
    metadata: dict[str, Any] = {"name": job_name(options.run_id), "namespace": namespace, "labels": labels}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", **owner}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": "1",  # one process per pod: WORLD_SIZE = pods; RANK 0 = Master, 1.. = Workers
            "pytorchReplicaSpecs": replicas,
            "runPolicy": {
                "backoffLimit": 3,
                "activeDeadlineSeconds": settings.timeout_seconds,
                "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
                "cleanPodPolicy": "Running",  # finished pods stay for their logs until the TTL
            },
        },
    }


def finished(job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's ``Succeeded`` or ``Failed`` condition once one is true, else None."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition
    return None


def submit_and_wait(
    job: dict[str, Any], settings: PyTorchJobSettings, api_client: Any = None
) -> dict[str, Any]:
    """Creates the job and polls it until it succeeds; returns the finished job.

    Raises:
        TrainingFailed: The job failed (with the operator's reason and where the logs are), or it ran past
            ``timeout_seconds`` (it is deleted then).
    """
    from kubernetes import client

    api = client.CustomObjectsApi(api_client or kube.api_client())
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    log.info("pytorchjob created", extra={"namespace": namespace, "job": name})
    deadline = time.monotonic() + settings.timeout_seconds
    phase = None
    while True:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        conditions = current.get("status", {}).get("conditions") or []
        if conditions and conditions[-1].get("type") != phase:
            phase = conditions[-1].get("type")
            log.info("pytorchjob", extra={"job": name, "phase": phase})
        if (done := finished(current)) is not None:
            break
        if time.monotonic() >= deadline:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise TrainingFailed(
                f"PyTorchJob {namespace}/{name} ran past {settings.timeout_seconds} s: deleted"
            )
        time.sleep(settings.poll_seconds)
    if done["type"] == "Failed":
        raise TrainingFailed(
            f"PyTorchJob {namespace}/{name} failed: {done.get('reason', '')}: {done.get('message', '')}\n"
            f"Logs: kubectl logs -n {namespace} -l training.kubeflow.org/job-name={name} --prefix"
        )
    return current


def train_in_cluster(
    workers: int,
    options: WorkerOptions,
    *,
    image: str,
    settings: RelearnSettings | None = None,
    job_settings: PyTorchJobSettings | None = None,
    api_client: Any = None,
) -> None:
    """Runs the training as a PyTorchJob and leaves rank 0's model in ``options.model_dir``.

    Args:
        workers: Training processes (pods).
        options: The step's view: a local training set path, its MLflow run and model directory.
        image: Image of the pods (the pipeline image).
        settings: How to reach MLflow (the pods get the same tracking URI).
        job_settings: Namespace, resources, timeout (default: ``RELEARN_TRAINING_*``).
        api_client: A ``kubernetes.client.ApiClient`` (default: in-cluster config, else kubeconfig).

    Raises:
        TrainingFailed: The job failed or timed out.
    """
    import mlflow

    if not image:
        raise TrainingFailed("the PyTorchJob needs an image: the pipeline passes its own")
    settings = settings or RelearnSettings()
    job_settings = job_settings or PyTorchJobSettings()
    tracking_uri = settings.tracking_uri()
    source = Path(options.training_set)
    mlflow.MlflowClient(tracking_uri).log_artifact(options.run_id, str(source), INPUT_ARTIFACT)
    in_pods = options.model_copy(
        update={
            "training_set": f"runs:/{options.run_id}/{INPUT_ARTIFACT}/{source.name}",
            "model_dir": POD_MODEL_DIR,
            "log_model": True,
        }
    )
    # The pods see relearn's settings as this step does (no secrets: those come from config_map/Secrets).
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("RELEARN_") and not k.startswith(WorkerOptions.model_config["env_prefix"])
    }
    env["RELEARN_MLFLOW_TRACKING_URI"] = tracking_uri
    owner = {"name": os.environ.get("KFP_POD_NAME", ""), "uid": os.environ.get("KFP_POD_UID", "")}
    job = render(
        workers,
        in_pods,
        image=image,
        namespace=job_settings.namespace or own_namespace(),
        settings=job_settings,
        env=env,
        owner=owner if all(owner.values()) else None,
    )
    submit_and_wait(job, job_settings, api_client)
    with tempfile.TemporaryDirectory(prefix="relearn-model-") as tmp:
        uri = f"runs:/{options.run_id}/{MODEL_ARTIFACT}"
        downloaded = mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=tracking_uri)
        shutil.copytree(downloaded, options.model_dir, dirs_exist_ok=True)


def own_namespace() -> str:
    """The namespace of the pod this runs in (its service account's), or ``default`` outside a cluster."""
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"
