"""Kubernetes API access shared by the rollout backend and the PyTorchJob launcher."""

from __future__ import annotations

import os
from typing import Any


def api_client() -> Any:
    """A Kubernetes API client: the in-cluster service account, else the kubeconfig (``KUBECONFIG``)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        # KUBECONFIG as it is now: the client reads its default only once, when it is imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()
