"""The driver program of the features step's SparkApplication: ``python spark_driver.py --help``.

The Spark Operator starts it with ``spark-submit`` in the driver pod (``mainApplicationFile``), which has
already made the session (master, executors); :func:`~relearn.features.spark_step.spark_work` uses it.
``--task features`` (the default) checks the lake, writes the entity tables, applies the Feast repo and
writes the training set, then the summary as JSON (``--summary``) for the step that submitted the
application; a bad lake ends it with the readable report on stderr and exit code 1, which the operator
reports as the application's failure. ``--task validate`` runs the validate step's checks over the lake
(relearn.data.validate_spark) and writes the report as JSON (``--report``), failing checks included: the
step decides (exit 1 only when Spark itself fails). The flags are relearn's command base
(:mod:`relearn.commands`): a bad option, or a task without its output flags, exits 2 before Spark starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from relearn import commands
from relearn.commands import Command, command_config

# What each task writes besides the lake it reads: the flags it cannot run without.
NEEDED = {"features": ("labels", "training_set", "summary"), "validate": ("report",)}


class DriverCommand(Command):
    """The features step's SparkApplication driver: the features (default) or validate task over a lake."""

    model_config = command_config("relearn.features.spark_driver", "RELEARN_SPARK_DRIVER_")

    task: Literal["features", "validate"] = Field("features", description="What to run.")
    transactions: str = Field(description="Transactions lake root (day partitions).")
    labels: str | None = Field(None, description="Labels (chargebacks) lake root (features).")
    training_set: str | None = Field(
        None, description="Where the training set's Parquet file goes (features)."
    )
    start: str = Field(description="Window start, ISO-8601 (UTC if naive).")
    days: int = Field(ge=0, description="Window length in days.")
    label_maturity_days: int = Field(10, ge=0, description="Newest days kept out of training.")
    summary: str | None = Field(None, description="Where the step's summary (JSON) goes (features).")
    report: str | None = Field(None, description="Where the validation report (JSON) goes (validate).")
    _exit_code: int = PrivateAttr(0)

    @model_validator(mode="after")
    def _task_has_its_outputs(self) -> DriverCommand:
        missing = [f"--{n.replace('_', '-')}" for n in NEEDED[self.task] if getattr(self, n) is None]
        if missing:
            raise ValueError(f"--task {self.task} needs {' '.join(missing)}")
        return self

    def cli_cmd(self) -> None:
        """Run the task; the exit status (0 written, 1 bad lake or Spark failure) is left on the command."""
        self.start_logging()
        self._exit_code = run(self)


def run(args: DriverCommand) -> int:
    """Run Spark's part of a step; 0 when its output is written, 1 on a bad lake or a Spark failure."""
    from relearn.data.io import window
    from relearn.errors import StepFailed
    from relearn.features.spark_step import spark_work, validate_spark
    from relearn.settings import RelearnSettings

    begin, end = window(args.start, args.days)
    try:
        if args.task == "validate":
            from relearn.data.validate import Expectations

            assert args.report is not None  # the validator's check
            report = validate_spark(args.transactions, Expectations(), begin, end, args.report, local=True)
            Path(args.report).write_text(report.model_dump_json())
            return 0
        assert args.labels and args.training_set and args.summary
        summary = spark_work(
            args.transactions,
            args.labels,
            args.training_set,
            begin=begin,
            end=end,
            label_maturity_days=args.label_maturity_days,
            settings=RelearnSettings(),
        )
    except StepFailed as exc:
        print(f"\n{exc}\n", file=sys.stderr, flush=True)
        return 1
    Path(args.summary).write_text(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The driver: 0 when its output is written, 1 on a bad lake or a Spark failure, 2 on a bad option."""
    return commands.run(DriverCommand, argv, "spark driver")._exit_code


if __name__ == "__main__":
    sys.exit(main())
