"""The driver program of the features step's SparkApplication: ``python spark_driver.py --help``.

The Spark Operator starts it with ``spark-submit`` in the driver pod (``mainApplicationFile``), which has
already made the session (master, executors); :func:`~relearn.features.spark_step.spark_work` uses it.
``--task features`` (the default) checks the lake, writes the entity tables, applies the Feast repo and
writes the training set, then the summary as JSON (``--summary``) for the step that submitted the
application; a bad lake ends it with the readable report on stderr and exit code 1, which the operator
reports as the application's failure. ``--task validate`` runs the validate step's checks over the lake
(relearn.data.validate_spark) and writes the report as JSON (``--report``), failing checks included: the
step decides (exit 1 only when Spark itself fails).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    """The driver's command line (what the SparkApplication's ``arguments`` hold)."""
    parser = argparse.ArgumentParser(
        prog="relearn.features.spark_driver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--task", choices=("features", "validate"), default="features", help="What to run.")
    parser.add_argument("--transactions", required=True, help="Transactions lake root (day partitions).")
    parser.add_argument("--labels", help="Labels (chargebacks) lake root (features).")
    parser.add_argument("--training-set", help="Where the training set's Parquet file goes (features).")
    parser.add_argument("--start", required=True, help="Window start, ISO-8601 (UTC if naive).")
    parser.add_argument("--days", type=int, required=True, help="Window length in days.")
    parser.add_argument(
        "--label-maturity-days", type=int, default=10, help="Newest days kept out of training."
    )
    parser.add_argument("--summary", help="Where the step's summary (JSON) goes (features).")
    parser.add_argument("--report", help="Where the validation report (JSON) goes (validate).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run Spark's part of a step; 0 when its output is written, 1 on a bad lake or a Spark failure."""
    cli = parser()
    args = cli.parse_args(argv)
    needed = ("labels", "training_set", "summary") if args.task == "features" else ("report",)
    missing = [f"--{n.replace('_', '-')}" for n in needed if getattr(args, n) is None]
    if missing:
        cli.error(f"--task {args.task} needs {' '.join(missing)}")
    from relearn.data.io import window
    from relearn.errors import StepFailed
    from relearn.features.spark_step import spark_work, validate_spark
    from relearn.logs import configure_logging
    from relearn.settings import RelearnSettings

    configure_logging()
    begin, end = window(args.start, args.days)
    try:
        if args.task == "validate":
            from relearn.data.validate import Expectations

            report = validate_spark(args.transactions, Expectations(), begin, end, args.report, local=True)
            Path(args.report).write_text(report.model_dump_json())
            return 0
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


if __name__ == "__main__":
    sys.exit(main())
