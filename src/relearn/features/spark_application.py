"""The features step in a cluster: a SparkApplication (``sparkoperator.k8s.io/v1beta2``), submitted, awaited.

Kubeflow's Spark Operator runs the driver pod (``spark-submit`` of :mod:`relearn.features.spark_driver`)
and the executors it asks for. The lake, the Feast offline files and the training set live in object
storage that every pod reaches (S3-compatible: ``s3a://`` paths, credentials from a Secret as the
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` environment). The step acts as these commands would::

    kubectl create -f sparkapplication.yaml
    kubectl get sparkapplication/relearn-features-<id> -o jsonpath='{.status.applicationState.state}'

until ``COMPLETED`` (or ``FAILED`` / ``SUBMISSION_FAILED``: stop with the operator's ``errorMessage``), and
deletes the application past its timeout. RBAC for the step: ``create``, ``get`` and ``delete`` on
``sparkapplications``; the driver's service account is the operator's (it creates the executor pods).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.data.spark_session import SparkEngineError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "sparkoperator.k8s.io", "v1beta2", "sparkapplications", "SparkApplication"
DONE, FAILED = "COMPLETED", ("FAILED", "SUBMISSION_FAILED")
UID = 185  # the apache/spark image's user (components/features/Dockerfile.spark keeps it)
# S3A (hadoop-aws 3.4+, AWS SDK v2) reading the keys from the environment.
CREDENTIALS_PROVIDER = "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
# The driver program as the Spark image holds it (relearn installed into the image's Python).
DRIVER_FILE = "local:///opt/relearn/spark_driver.py"


class SparkApplicationSettings(BaseSettings):
    """How the features step runs a SparkApplication (``RELEARN_SPARK_APP_*``)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_SPARK_APP_", extra="ignore")

    namespace: str = Field("kubeflow", description="Namespace of the application.")
    image: str = Field("", description="Spark image with relearn (default: relearn-spark of this version).")
    spark_version: str = Field("4.3.0", description="Spark version of the image (pyspark's, pinned).")
    driver_file: str = Field(DRIVER_FILE, description="mainApplicationFile: the driver program in the image.")
    service_account: str = Field("spark-operator-spark", description="Driver's service account (executors).")
    config_map: str | None = Field(None, description="ConfigMap of relearn's settings (envFrom, all pods).")
    s3_secret: str | None = Field(None, description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000.")
    lake_uri: str | None = Field(None, description="The lake's root in object storage (s3a://bucket/prefix).")
    executors: int = Field(2, ge=1, description="Executor pods.")
    executor_cores: int = Field(2, ge=1, description="Cores per executor.")
    executor_memory: str = Field("4g", description="Heap per executor (the operator adds the overhead).")
    driver_cores: int = Field(1, ge=1, description="Driver cores.")
    driver_memory: str = Field("4g", description="Driver heap.")
    shuffle_partitions: int = Field(64, ge=1, description="spark.sql.shuffle.partitions.")
    timeout_seconds: int = Field(7200, ge=1, description="Longest the application may run; then deleted.")
    poll_seconds: float = Field(5.0, gt=0, description="Time between two reads of its status.")
    ttl_seconds: int = Field(86400, ge=0, description="timeToLiveSeconds: finished applications are kept.")


def default_image() -> str:
    """``ghcr.io/relearn/relearn-spark:<version>``: relearn's Spark image of this version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ghcr.io/relearn/relearn-spark:{version('relearn')}"
    except PackageNotFoundError:
        return "ghcr.io/relearn/relearn-spark:latest"


def app_name(run_id: str) -> str:
    """``relearn-features-<id>``: the driver pod's name (``-driver`` appended) stays within 63 characters."""
    return f"relearn-features-{run_id}"[:54].rstrip("-")


def render(
    run_id: str,
    arguments: list[str],
    *,
    image: str,
    settings: SparkApplicationSettings,
    env: dict[str, str] | None = None,
    owner: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The SparkApplication running the driver with ``arguments`` (see ``spark_driver.py --help``)."""
    labels = {
        "app.kubernetes.io/name": "relearn",
        "app.kubernetes.io/component": "features",
        "app.kubernetes.io/part-of": "relearn",
        "relearn.io/run-id": run_id,
    }
    pod: dict[str, Any] = {
        "labels": labels,
        "env": [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "runAsUser": UID,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    sources = [{"configMapRef": {"name": settings.config_map}}] if settings.config_map else []
    sources += [{"secretRef": {"name": settings.s3_secret}}] if settings.s3_secret else []
    if sources:
        pod["envFrom"] = sources
    hadoop = {
        "fs.s3a.path.style.access": "true",  # MinIO and most S3-compatible stores: bucket in the path
        # Only the Secret's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (envFrom), not the node's instance role.
        "fs.s3a.aws.credentials.provider": CREDENTIALS_PROVIDER,
    }
    if settings.s3_endpoint:
        hadoop["fs.s3a.endpoint"] = settings.s3_endpoint
    metadata: dict[str, Any] = {"name": app_name(run_id), "namespace": settings.namespace, "labels": labels}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", **owner}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": settings.driver_file,
            "arguments": list(arguments),
            "sparkVersion": settings.spark_version,
            "sparkConf": {
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.sql.adaptive.enabled": "false",
                "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            },
            "hadoopConf": hadoop,
            "restartPolicy": {"type": "Never"},  # a bad lake fails the same way twice: report it once
            "timeToLiveSeconds": settings.ttl_seconds,
            "driver": {
                **pod,
                "cores": settings.driver_cores,
                "memory": settings.driver_memory,
                "serviceAccount": settings.service_account,
            },
            "executor": {
                **pod,
                "instances": settings.executors,
                "cores": settings.executor_cores,
                "memory": settings.executor_memory,
            },
        },
    }


def state(app: dict[str, Any]) -> tuple[str, str]:
    """``(state, errorMessage)`` of the application ("" before the operator has seen it)."""
    current = (app.get("status") or {}).get("applicationState") or {}
    return current.get("state", ""), current.get("errorMessage", "")


def submit_and_wait(
    app: dict[str, Any], settings: SparkApplicationSettings, api_client: Any = None
) -> dict[str, Any]:
    """Create the application and poll it until it completes; return the finished application.

    Raises:
        SparkEngineError: It failed (the operator's state and message, and where the driver's log is), or
            ran past ``timeout_seconds`` (then it is deleted).
    """
    from kubernetes import client

    from relearn import kube

    api = client.CustomObjectsApi(api_client or kube.api_client())
    namespace, name = app["metadata"]["namespace"], app["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, app)
    log.info("sparkapplication created", extra={"namespace": namespace, "application": name})
    deadline, seen = time.monotonic() + settings.timeout_seconds, ""
    while True:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        phase, message = state(current)
        if phase != seen:
            seen = phase
            log.info("sparkapplication", extra={"application": name, "state": phase})
        if phase == DONE:
            return current
        if phase in FAILED:
            raise SparkEngineError(
                f"SparkApplication {namespace}/{name} {phase}: {message or 'no message'}; "
                f"the driver's report: kubectl logs -n {namespace} {name}-driver"
            )
        if time.monotonic() >= deadline:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise SparkEngineError(
                f"SparkApplication {namespace}/{name} ran past {settings.timeout_seconds} s: deleted"
            )
        time.sleep(settings.poll_seconds)
