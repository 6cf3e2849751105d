"""The compiled training pipeline is YAML that Kubeflow Pipelines accepts."""

from __future__ import annotations

import itertools

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components import PIPELINE_IMAGE
from pipelines.compile import compile_all

STEPS = ["ingest", "validate", "features", "train", "evaluate", "register", "gate", "deploy"]


def test_compiled_yaml_parses_into_pipeline_spec(tmp_path):
    (path,) = compile_all(tmp_path)
    doc = yaml.safe_load(path.read_text())
    spec = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())  # raises on unknown fields
    assert spec.pipeline_info.name == "relearn-train"
    assert sorted(spec.root.dag.tasks) == sorted(STEPS)
    # The steps run in order: each one depends on the one before it.
    deps = {name: set(task.dependent_tasks) for name, task in spec.root.dag.tasks.items()}
    for before, after in itertools.pairwise(STEPS):
        assert before in deps[after], (before, after)
    params = spec.root.input_definitions.parameters
    assert {"start", "days", "seed", "epochs", "alert_budget"} <= set(params)
    assert params["days"].default_value.number_value > 0


def test_every_step_runs_our_image_without_pip_installs(tmp_path):
    (path,) = compile_all(tmp_path)
    doc = yaml.safe_load(path.read_text())
    executors = doc["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == PIPELINE_IMAGE
        # The image carries kfp and relearn: nothing is installed when a pod starts.
        assert "pip install" not in " ".join(container["command"])
        assert "from relearn import steps" in " ".join(container["command"])
