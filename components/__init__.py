"""KFP components: one thin wrapper per pipeline step over code in ``relearn.steps``.

Every component is a lightweight Python component whose base image is relearn's pipeline image
(``components/Dockerfile``), so the very same package code runs in a Kubeflow pod and, locally, in a
``kfp.local.SubprocessRunner`` subprocess. The image already holds kfp, so nothing is pip-installed at
run time.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import tomllib
from pathlib import Path

from kfp import dsl

# The registry of relearn's images: the chart's defaults (charts/relearn/values.yaml `images:`), `make images`
# and the release workflow (.github/workflows/release.yaml) name them <registry>/relearn-<name>:<version>.
IMAGE_REGISTRY = "ghcr.io/relearn"


def package_version() -> str:
    """The package version: the installed distribution's, else pyproject.toml's (a plain source tree)."""
    try:
        return importlib.metadata.version("relearn")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


# Read once when the pipeline is defined. RELEARN_PIPELINE_IMAGE (the Dockerfiles' build arg, which the
# release workflow sets to the image it pushes) overrides it; empty or unset: this version's release image.
PIPELINE_IMAGE = (
    os.environ.get("RELEARN_PIPELINE_IMAGE") or f"{IMAGE_REGISTRY}/relearn-pipeline:{package_version()}"
)

relearn_component = functools.partial(dsl.component, base_image=PIPELINE_IMAGE, install_kfp_package=False)
