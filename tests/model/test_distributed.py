"""Data-parallel training: real gloo processes (torchrun), real MLflow, a PyTorchJob run without a cluster.

Tolerance. Two processes train the single-process model exactly in exact arithmetic: the same global batches,
the same per-sample dropout masks, gradients summed over the processes (DDP) and scaled to the global batch
mean. What differs is the order of float32 summations (two partial gradient sums and one all-reduce instead of
one sum), about 1e-7 relative per step. Over the ~100 Adam steps here that stays below 1e-6 in the weights
(measured: 2.4e-7; it grows with the steps, ~1e-4 after 600: make bench-distributed); the tests allow
WEIGHT_ATOL = 1e-5 and check that a different seed moves the scores by far more, so the tolerance still tells
models apart. Validation PR-AUC moves only where two scores 1e-7 apart swap ranks: METRIC_ATOL = 1e-4.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from relearn import steps
from relearn.model import pytorchjob
from relearn.model.distributed import TrainingFailed, WorkerOptions, read_shard, resolve_backend
from relearn.model.net import load_model, score
from relearn.model.train import TrainParams, time_split, train
from relearn.settings import RelearnSettings
from support.chart import K8S_VERSION, _run, _tool, needs_helm, objects, rendered
from support.crds import CRDS, crd_errors
from support.frames import synthetic_frame
from support.kube_api import FakeApiServer
from support.serving_stack import free_port

WEIGHT_ATOL = 1e-5
METRIC_ATOL = 1e-4
ROWS = 40_000
PARAMS = steps.TrainStepParams(epochs=4, patience=4, batch_size=1024, seed=7, val_fraction=0.15)
JOBS = "/apis/kubeflow.org/v1/namespaces/kubeflow/pytorchjobs"
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"no CRDs in {CRDS}")


@pytest.fixture(scope="module")
def training_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The features step's output: sorted by event time, written in several row groups."""
    path = tmp_path_factory.mktemp("data") / "training_set.parquet"
    synthetic_frame(ROWS).to_parquet(path, index=False, row_group_size=7_000)
    return path


@pytest.fixture(scope="module")
def one_process(training_set: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the train step with one worker (in this process), its metrics, model and history."""
    home = tmp_path_factory.mktemp("one")
    settings = RelearnSettings(home=home / "home")
    out = steps.train(str(training_set), str(home / "model"), PARAMS, settings)
    return _trained(out, home / "model", settings)


def _trained(out: dict[str, Any], model_dir: Path, settings: RelearnSettings) -> dict[str, Any]:
    client = MlflowClient(settings.tracking_uri())
    history = client.get_metric_history(out["run_id"], "val_pr_auc")
    run = client.get_run(out["run_id"])
    net, preprocessor, meta = load_model(model_dir)
    return {**out, "net": net, "preprocessor": preprocessor, "meta": meta, "history": history, "run": run}


def _assert_same_model(got: dict[str, Any], want: dict[str, Any], test_df: pd.DataFrame) -> None:
    assert got["metrics"]["best_epoch"] == want["metrics"]["best_epoch"]
    assert got["metrics"]["best_val_pr_auc"] == pytest.approx(
        want["metrics"]["best_val_pr_auc"], abs=METRIC_ATOL
    )
    # Rank 0 alone logged: one value per epoch, not one per process.
    assert [m.step for m in got["history"]] == [m.step for m in want["history"]]
    for a, b in zip(got["history"], want["history"], strict=True):
        assert a.value == pytest.approx(b.value, abs=METRIC_ATOL)
    np.testing.assert_allclose(got["preprocessor"].mean, want["preprocessor"].mean, rtol=1e-12)
    np.testing.assert_allclose(got["preprocessor"].std, want["preprocessor"].std, rtol=1e-12)
    state, reference = got["net"].state_dict(), want["net"].state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(state[name], tensor, atol=WEIGHT_ATOL, rtol=0, msg=name)
    scores = score(got["net"], got["preprocessor"], test_df)
    np.testing.assert_allclose(scores, score(want["net"], want["preprocessor"], test_df), atol=WEIGHT_ATOL)
    assert got["meta"] == {"mlflow_run_id": got["run_id"]}


# ---------------------------------------------------------------------------------------- local torchrun
def test_two_gloo_processes_train_the_single_process_model(
    training_set: Path, one_process: dict[str, Any], settings: RelearnSettings, tmp_path: Path
) -> None:
    params = PARAMS.model_copy(update={"workers": 2, "distributed_backend": "local"})
    out = steps.train(str(training_set), str(tmp_path / "model"), params, settings)
    two = _trained(out, tmp_path / "model", settings)
    _, _, test_df = time_split(pd.read_parquet(training_set), PARAMS.val_fraction, PARAMS.test_fraction)
    _assert_same_model(two, one_process, test_df)
    assert two["run"].data.params["workers"] == "2" and two["run"].data.params["processes"] == "2"
    assert two["run"].data.params["train_rows"] == one_process["run"].data.params["train_rows"]

    # The tolerance tells models apart: another seed lands far outside it.
    train_df, val_df, _ = time_split(pd.read_parquet(training_set), PARAMS.val_fraction, PARAMS.test_fraction)
    other = train(train_df, val_df, TrainParams(epochs=1, batch_size=1024, seed=8, progress=False))
    gap = np.abs(
        score(other.net, other.preprocessor, test_df) - score(two["net"], two["preprocessor"], test_df)
    )
    assert gap.max() > 100 * WEIGHT_ATOL


def test_shards_partition_the_time_splits(training_set: Path) -> None:
    frame = pd.read_parquet(training_set)
    train_df, val_df, _ = time_split(frame, 0.15, 0.2)
    shards = [read_shard(training_set, rank, 3, 0.15, 0.2) for rank in range(3)]
    pd.testing.assert_frame_equal(pd.concat([s.train for s in shards], ignore_index=True), train_df)
    pd.testing.assert_frame_equal(
        pd.concat([s.val for s in shards], ignore_index=True), val_df.reset_index(drop=True)
    )
    assert [s.train_offset for s in shards] == [0, len(train_df) // 3, 2 * len(train_df) // 3]
    assert {s.n_train for s in shards} == {len(train_df)}
    assert shards[0].val_sizes == tuple(len(s.val) for s in shards)


def test_an_unsorted_training_set_is_refused(tmp_path: Path) -> None:
    frame = synthetic_frame(2000).iloc[::-1]
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    with pytest.raises(ValueError, match="not sorted by event_timestamp"):
        read_shard(tmp_path / "t.parquet", 0, 2, 0.15, 0.2)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFP_POD_NAME", raising=False)
    assert resolve_backend("auto") == "local"  # kfp.local, make train
    monkeypatch.setenv("KFP_POD_NAME", "relearn-train-abc-system-container-impl-123")
    assert resolve_backend("auto") == "pytorchjob"  # a Kubeflow Pipelines pod
    assert resolve_backend("local") == "local"
    with pytest.raises(ValueError, match="distributed_backend"):
        resolve_backend("mpi")


def test_worker_options_round_trip_through_the_command_line() -> None:
    from pydantic_settings import CliApp

    options = WorkerOptions(
        training_set="runs:/abc/inputs/t.parquet",
        run_id="abc",
        model_dir=Path("/tmp/m"),
        params=TrainParams(epochs=3, hidden=(8, 4), pos_weight=2.0),
        log_model=True,
    )

    class Parsed(WorkerOptions):
        def cli_cmd(self) -> None:
            pass

    parsed = CliApp.run(Parsed, cli_args=options.cli_args())
    assert parsed.model_dump() == options.model_dump()


# ------------------------------------------------------------------------------------------- PyTorchJob
class TrainingOperator:
    """Plays the Kubeflow Training Operator for each created PyTorchJob.

    It runs the replicas as local processes with what the operator and kubelet give a pod: the container's
    command, args and env, the torch.distributed environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK;
    Master is rank 0), and the emptyDir at /tmp (a folder per pod). It records the outcome as the job's
    conditions, like the operator: Created, Running, then Succeeded or Failed. ``outcome`` skips the processes
    and sets that final condition at once (None: never finish).
    """

    def __init__(self, api: FakeApiServer, root: Path, outcome: str | None = "run") -> None:
        self.api, self.root, self.outcome = api, root, outcome

    def _conditions(self, path: str, *types: str, reason: str = "", message: str = "") -> None:
        conditions = [{"type": t, "status": "True", "reason": reason, "message": message} for t in types]
        self.api.objects[path] = {**self.api.objects[path], "status": {"conditions": conditions}}

    def __call__(self, path: str, job: dict[str, Any]) -> None:
        self._conditions(path, "Created")
        if self.outcome == "run":
            threading.Thread(target=self._run, args=(path, job), daemon=True).start()
        elif self.outcome is not None:
            self._conditions(
                path, "Created", self.outcome, reason="PyTorchJobFailed", message="pod OOMKilled"
            )

    def _run(self, path: str, job: dict[str, Any]) -> None:
        specs = job["spec"]["pytorchReplicaSpecs"]
        pods = [specs["Master"]] + [specs["Worker"]] * specs.get("Worker", {}).get("replicas", 0)
        port, processes = free_port(), []
        for rank, spec in enumerate(pods):
            container = spec["template"]["spec"]["containers"][0]
            tmp = self.root / f"pod-{rank}"
            tmp.mkdir(parents=True)
            env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
            env |= {e["name"]: e["value"] for e in container["env"]}
            env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            env |= {"WORLD_SIZE": str(len(pods)), "RANK": str(rank)}
            command = [sys.executable if c == "python" else c for c in container["command"]]
            args = [str(tmp / a[len("/tmp/") :]) if a.startswith("/tmp/") else a for a in container["args"]]
            processes.append(subprocess.Popen([*command, *args], env=env, cwd=tmp))
        self._conditions(path, "Created", "Running")
        codes = [p.wait() for p in processes]
        final = "Succeeded" if not any(codes) else "Failed"
        self._conditions(path, "Created", "Running", final, message=f"exit codes {codes}")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    """A fake API server with a training operator, reached through a kubeconfig like kubectl would."""
    api = FakeApiServer()
    api.on_create = TrainingOperator(api, tmp_path / "pods")
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("RELEARN_TRAINING_NAMESPACE", "kubeflow")
    monkeypatch.setenv("RELEARN_TRAINING_POLL_SECONDS", "0.2")
    with api:
        yield api


@needs_crds
def test_pytorchjob_in_a_kfp_pod_trains_the_single_process_model(
    training_set: Path,
    one_process: dict[str, Any],
    cluster: FakeApiServer,
    settings: RelearnSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KFP_POD_NAME", "relearn-train-xyz-impl-1")  # what KFP sets in its pods
    monkeypatch.setenv("KFP_POD_UID", "0b4f7c1e-2f5d-4b8e-9a51-6c2d7e8f9a10")
    params = PARAMS.model_copy(update={"workers": 2, "image": "relearn-pipeline:test"})  # backend auto
    out = steps.train(str(training_set), str(tmp_path / "model"), params, settings)

    create, *polls = cluster.requests
    assert create["method"] == "POST" and create["path"] == JOBS
    assert cluster.rejected == []  # the server validated the job against the closed CRD schema
    assert {r["method"] for r in polls} == {"GET"} and len(polls) >= 2
    job = create["body"]
    assert job["metadata"]["name"] == f"relearn-train-{out['run_id']}"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "relearn-train-xyz-impl-1",
            "uid": os.environ["KFP_POD_UID"],
        }
    ]
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"], job["spec"]["nprocPerNode"]) == (
        1,
        1,
        "1",
    )
    [container] = specs["Master"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"] == "relearn-pipeline:test"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RELEARN_MLFLOW_TRACKING_URI"] == settings.tracking_uri()
    assert f"runs:/{out['run_id']}/inputs/training_set.parquet" in container["args"]

    # The data went through the run; the model came back from it and is the one-process model.
    client = MlflowClient(settings.tracking_uri())
    assert [a.path for a in client.list_artifacts(out["run_id"], "inputs")] == ["inputs/training_set.parquet"]
    got = _trained(out, tmp_path / "model", settings)
    _, _, test_df = time_split(pd.read_parquet(training_set), PARAMS.val_fraction, PARAMS.test_fraction)
    _assert_same_model(got, one_process, test_df)


def _job(run_id: str = "0123456789abcdef0123456789abcdef", workers: int = 3) -> dict[str, Any]:
    options = WorkerOptions(training_set=f"runs:/{run_id}/inputs/t", run_id=run_id, model_dir=Path("/tmp/m"))
    return pytorchjob.render(
        workers,
        options,
        image="relearn-pipeline:0.1.0",
        namespace="kubeflow",
        settings=pytorchjob.PyTorchJobSettings(config_map="relearn-settings", service_account="trainer"),
        env={"RELEARN_MLFLOW_TRACKING_URI": "http://mlflow:5000"},
    )


@needs_crds
def test_rendered_job_validates_and_typos_fail() -> None:
    job = _job()
    assert crd_errors(job) == []
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 2)
    pod = specs["Worker"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "trainer"
    assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": "relearn-settings"}}]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert "Worker" not in _job(workers=1)["spec"]["pytorchReplicaSpecs"]
    typo = _job()
    typo["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicyy"] = "Never"
    assert any("restartPolicyy" in e for e in crd_errors(typo))
    typo = _job()
    typo["spec"]["runPolicy"]["activeDeadlineSecond"] = 60
    assert any("activeDeadlineSecond" in e for e in crd_errors(typo))


@needs_crds
def test_a_failed_job_surfaces_the_operator_reason(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.on_create = TrainingOperator(api, tmp_path, outcome="Failed")
        settings = pytorchjob.PyTorchJobSettings(poll_seconds=0.05)
        with pytest.raises(TrainingFailed) as failure:
            pytorchjob.submit_and_wait(_job(), settings, api.api_client())
    message = str(failure.value)
    assert "PyTorchJobFailed: pod OOMKilled" in message
    assert "kubectl logs -n kubeflow -l training.kubeflow.org/job-name=relearn-train-" in message
    assert [r["method"] for r in api.requests] == ["POST", "GET"]


@needs_crds
def test_a_job_past_its_timeout_is_deleted(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.on_create = TrainingOperator(api, tmp_path, outcome=None)  # never finishes
        settings = pytorchjob.PyTorchJobSettings(timeout_seconds=1, poll_seconds=0.1)
        with pytest.raises(TrainingFailed, match="ran past 1 s"):
            pytorchjob.submit_and_wait(_job(), settings, api.api_client())
    assert api.requests[-1]["method"] == "DELETE"
    assert api.requests[-1]["path"] == f"{JOBS}/relearn-train-0123456789abcdef0123456789abcdef"
    assert api.objects == {}


# -------------------------------------------------------------------------------------------------- RBAC
@needs_helm
def test_pytorchjob_rbac_is_least_privilege_and_off_by_default(tmp_path: Path) -> None:
    assert not [d for d in rendered("default") if d["metadata"]["name"].endswith("-pytorchjobs")]
    docs = rendered("default", "--set", "training.pytorchJobRbac.enabled=true")
    [role] = [d for d in objects(docs, "Role") if d["metadata"]["name"] == "relearn-pytorchjobs"]
    assert role["metadata"]["namespace"] == "kubeflow"  # where the KFP run pods create their jobs
    assert role["rules"] == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get", "delete"]}
    ]
    [binding] = [d for d in objects(docs, "RoleBinding") if d["metadata"]["name"] == "relearn-pytorchjobs"]
    assert binding["roleRef"]["name"] == "relearn-pytorchjobs"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]
    validate = _tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate missing: run .ci/install-tools.sh")
    files = []
    for doc in (role, binding):
        files.append(tmp_path / f"{doc['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    out = _run([validate, "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)])
    assert out.returncode == 0 and "ERROR" not in out.stdout, out.stdout + out.stderr
