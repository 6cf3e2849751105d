"""KFP components: one thin wrapper per pipeline step over code in ``relearn.steps``.

Every component is a lightweight Python component whose base image is relearn's pipeline image
(``components/Dockerfile``), so the very same package code runs in a Kubeflow pod and, locally, in a
``kfp.local.SubprocessRunner`` subprocess. The image already holds kfp, so nothing is pip-installed at
run time.
"""

from __future__ import annotations

import functools
import os

from kfp import dsl

# Read once when the pipeline is defined; `make pipelines IMAGE=...` (or skaffold) sets the tag.
PIPELINE_IMAGE = os.environ.get("RELEARN_PIPELINE_IMAGE", "ghcr.io/relearn/relearn-pipeline:0.1.0")

relearn_component = functools.partial(dsl.component, base_image=PIPELINE_IMAGE, install_kfp_package=False)
