"""Run the training pipeline on this machine with ``kfp.local`` — relearn's embedded default.

Every pipeline parameter is a command-line option (and a ``RELEARN_TRAIN_<NAME>`` variable); the options
are read from the pipeline's own signature, so the pipeline stays the one place that declares them.
Usage: ``python -m pipelines.run --help`` (``make train ARGS="--days 28"``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kfp import local
from pydantic import Field, create_model
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from pipelines.train import PIPELINE_NAME, train_pipeline
from relearn.logs import configure_logging, progress_bar
from relearn.settings import RelearnSettings

log = logging.getLogger("relearn.pipeline")
KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool}


class LocalRunError(RuntimeError):
    """A pipeline task failed; the message says which one and where its report is."""


def git_sha() -> str:
    """The commit of the working tree, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


class _TaskProgress:
    """A stdout stand-in for kfp.local: keeps its full output in a log file, shows a bar over the steps."""

    _started = re.compile(r"Executing task \S*'([\w-]+)'")
    _finished = re.compile(r"Task \S*'([\w-]+)'\S* finished with status")

    def __init__(self, log_file, steps: int) -> None:
        self.log_file = log_file
        self.bar = progress_bar(total=steps, desc="relearn-train", unit="step", file=sys.stderr)

    def write(self, text: str) -> int:
        self.log_file.write(text)
        for line in text.splitlines():
            if started := self._started.search(line):
                self.bar.set_postfix_str(started.group(1))
            elif self._finished.search(line):
                self.bar.update(1)
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()


@contextlib.contextmanager
def _task_tmpdir() -> Iterator[None]:
    """The tasks' TMPDIR: a folder of this run's own, removed afterwards.

    kfp.local runs each lightweight component as ``sh -c 'program_path=$(mktemp -d) ...'`` and never removes
    that folder: without this, every run left one ``/tmp/tmp.*`` per task.
    """
    folder = tempfile.mkdtemp(prefix="relearn-pipeline-")  # in this process's own temp dir
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def task_dir(run_dir: Path, task: str) -> Path:
    """The folder kfp.local writes a task's output artifacts to."""
    return run_dir / task


def run_locally(
    params: dict[str, Any], pipeline_root: Path, home: Path, verbose: bool = False
) -> dict[str, Any]:
    """Runs the training pipeline through kfp.local's SubprocessRunner in this environment.

    Args:
        params: Pipeline arguments (names as in :func:`pipelines.train.train_pipeline`).
        pipeline_root: Where kfp.local writes task outputs (one folder per run).
        home: relearn's local state (MLflow, Feast); passed to the task subprocesses.
        verbose: Stream kfp.local's full output instead of a progress bar (it always goes to the log).

    Returns:
        A summary: run folder, model version, gate decision, report paths.

    Raises:
        LocalRunError: A task failed; the message names it and, for validation, holds its report.
    """
    # Tasks are subprocesses: they find MLflow and Feast through the same settings as this process.
    os.environ["RELEARN_HOME"] = str(home.resolve())
    pipeline_root = pipeline_root.resolve()
    before = set(pipeline_root.glob(f"{PIPELINE_NAME}-*")) if pipeline_root.exists() else set()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    log_path = pipeline_root / f".run-{os.getpid()}.log"  # per process: runs may share a root
    with log_path.open("w") as log_file, warnings.catch_warnings(), _task_tmpdir():
        # Our base image name does not contain "python"; kfp.local warns about that, needlessly here.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        progress = _TaskProgress(log_file, len(train_pipeline.pipeline_spec.root.dag.tasks))
        try:
            with contextlib.redirect_stdout(sys.stdout if verbose else progress):
                task, error = train_pipeline(**params), None
        except RuntimeError as exc:
            task, error = None, exc
        finally:
            progress.bar.close()
    new_runs = sorted(set(pipeline_root.glob(f"{PIPELINE_NAME}-*")) - before, key=lambda p: p.stat().st_mtime)
    run_dir = new_runs[-1] if new_runs else pipeline_root
    shutil.move(log_path, run_dir / "pipeline.log")
    if error is not None:
        raise LocalRunError(_failure_message(str(error), run_dir)) from None
    gate_decision = task_dir(run_dir, "gate") / "decision"
    # KFP names artifacts without extensions; a browser wants one.
    report = shutil.copyfile(task_dir(run_dir, "evaluate") / "report", run_dir / "evaluation.html")
    summary = {
        "run_dir": str(run_dir),
        "log": str(run_dir / "pipeline.log"),
        "gate": _outputs(run_dir, "gate")["reason"],
        "deploy": task.output,
        "evaluation_report": str(report),
        "gate_decision": str(gate_decision),
        "validation_report": str(task_dir(run_dir, "validate") / "report"),
    }
    summary["model_version"] = _outputs(run_dir, "register")["Output"]
    evaluation = task_dir(run_dir, "evaluate") / "evaluation"
    if evaluation.exists():
        evaluated = json.loads(evaluation.read_text())
        summary["headline"] = evaluated["headline"]
        summary["versus_baseline"] = evaluated["versus_baseline"]
    if gate_decision.exists():
        summary["gate_markdown"] = gate_decision.read_text()
    # The local drift detector's default reference (its mlflow-skinny cannot read a SQLite registry).
    from relearn.model.registry import export_champion_reference

    summary["drift_reference"] = str(export_champion_reference(RelearnSettings(home=home)))
    return summary


def _outputs(run_dir: Path, task: str) -> dict[str, Any]:
    """A finished task's parameter outputs, as kfp.local recorded them."""
    return json.loads((task_dir(run_dir, task) / "executor_output.json").read_text())["parameterValues"]


def _failure_message(error: str, run_dir: Path) -> str:
    report = task_dir(run_dir, "validate") / "report"
    if "validate" in error and report.exists():
        return f"The data failed validation; the run stopped before training.\n\n{report.read_text()}\n" + (
            f"Report: {report}"
        )
    return f"{error}\nTask outputs: {run_dir}\nFull log: {run_dir / 'pipeline.log'}"


def _pipeline_fields() -> dict[str, Any]:
    fields = {}
    for name, spec in train_pipeline.component_spec.inputs.items():
        fields[name] = (KFP_TYPES[spec.type], Field(spec.default, description=spec.description))
    fields["git_sha"] = (str | None, Field(None, description="Commit for lineage; default: git HEAD."))
    return fields


class _RunnerOptions(BaseSettings):
    """Run relearn's training pipeline locally with kfp.local.

    Steps: ingest → validate → features → train → evaluate → register → gate → deploy. Prints where the model
    version, metrics and reports are.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_TRAIN_", cli_prog_name="relearn-train", cli_kebab_case=True, extra="ignore"
    )

    pipeline_root: Path | None = Field(
        None, description="Where task outputs go (default: <RELEARN_HOME>/pipeline_runs)."
    )
    log_level: str = Field("INFO", description="Log level of relearn's JSON logs.")
    verbose: bool = Field(False, description="Stream every task's output instead of a progress bar.")
    summary_json: Path | None = Field(None, description="Also write the run's summary to this JSON file.")

    def cli_cmd(self) -> None:
        """Runs the pipeline and prints a summary; exits 1 with the report when a task fails."""
        configure_logging(self.log_level)
        params = {name: getattr(self, name) for name in train_pipeline.component_spec.inputs}
        params["git_sha"] = self.git_sha or git_sha()
        try:
            home = RelearnSettings().home
            summary = run_locally(params, self.pipeline_root or home / "pipeline_runs", home, self.verbose)
        except LocalRunError as exc:
            print(f"\nrelearn-train: FAILED\n{exc}", file=sys.stderr)
            raise SystemExit(1) from None
        if self.summary_json:
            self.summary_json.parent.mkdir(parents=True, exist_ok=True)
            self.summary_json.write_text(json.dumps(summary, indent=2, default=str))
        print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    """Prints what a person wants to know after a run."""
    from mlflow import MlflowClient

    settings = RelearnSettings()
    version = MlflowClient(settings.tracking_uri()).get_model_version(
        settings.model_name, summary["model_version"]
    )
    print("\nrelearn-train: pipeline finished")
    aliases = ", ".join(sorted(version.aliases)) or "no alias"
    print(f"  model version                models:/{settings.model_name}/{version.version} ({aliases})")
    for name, value in summary.get("headline", {}).items():
        print(f"  {name:<28} {value:.4f}" if isinstance(value, float) else f"  {name:<28} {value}")
    print(f"  versus baseline              {summary.get('versus_baseline', 'n/a')}")
    print(f"  gate                         {summary['gate']}")
    print(f"  evaluation report            {summary['evaluation_report']}")
    print(f"  gate decision                {summary['gate_decision']}")
    print(f"  deploy                       {summary['deploy']}")
    print(f"  drift reference (make drift) {summary.get('drift_reference')}")
    print(f"  pipeline run outputs         {summary['run_dir']}")
    print(f"  full log                     {summary['log']}")
    print(f"  MLflow tracking URI          {settings.tracking_uri()}")


RunnerSettings = create_model(
    "RunnerSettings", __base__=_RunnerOptions, __doc__=_RunnerOptions.__doc__, **_pipeline_fields()
)


def main() -> None:
    """Console entry point (``relearn-train``)."""
    CliApp.run(RunnerSettings)


if __name__ == "__main__":
    main()
