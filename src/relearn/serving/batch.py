"""Batch scoring: score many transactions with the online model and cache the scores in Feast.

``python -m relearn.serving.batch --input tx.parquet`` (a Parquet file or directory following
``TRANSACTION_SCHEMA``/``REQUEST_FIELDS``) or ``--source <root> --start <day> --end <day>`` (the
day-partitioned transactions the generator writes). Features are the point-in-time join at each
transaction's own time (:func:`relearn.features.store.historical_features`, the training-set code) followed by
:func:`relearn.features.transforms.model_inputs`; the model is the one the predictor serves
(``--model-uri``). Scores go to ``--output`` (Parquet: ``transaction_id, user_id, event_timestamp, score,
decision, model_version``) and, unless ``--no-push``, into the Feast online store as the feature view
``precomputed_scores`` keyed by ``transaction_id`` (entity ``transaction``), so a caller looks a precomputed
score up with :func:`lookup_scores` instead of running the model.

Rows are held to the data contract the transformer enforces (:mod:`relearn.data.contract`): a row breaking
it is not scored, the others are; the summary counts the refused rows and ``<output>.refused.parquet``
lists them in the transformer's words (``row N: field '...' must be ...``).
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.data.schema import REQUEST_FIELDS
from relearn.logs import configure_logging, progress_bar
from relearn.settings import RelearnSettings

log = logging.getLogger(__name__)
SCORES_VIEW = "precomputed_scores"
SCORE_FEATURES = ("score", "decision", "model_version")


def scores_definitions(path: Path) -> list[Any]:
    """The Feast entity, source and view of precomputed scores (source: the batch output Parquet)."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    transaction = Entity(name="transaction", join_keys=["transaction_id"], value_type=ValueType.STRING)
    source = FileSource(name="precomputed_scores_source", path=str(path), timestamp_field="event_timestamp")
    view = FeatureView(
        name=SCORES_VIEW,
        entities=[transaction],
        ttl=timedelta(days=30),
        schema=[
            Field(name="transaction_id", dtype=String),
            Field(name="score", dtype=Float64),
            Field(name="decision", dtype=Int64),
            Field(name="model_version", dtype=String),
        ],
        source=source,
        description="Scores computed by relearn.serving.batch, for lookups instead of online inference.",
    )
    return [transaction, source, view]


def lookup_scores(store: Any, transaction_ids: list[str]) -> pd.DataFrame:
    """Precomputed ``score, decision, model_version`` per transaction id (null where none was pushed)."""
    return store.get_online_features(
        features=[f"{SCORES_VIEW}:{name}" for name in SCORE_FEATURES],
        entity_rows=[{"transaction_id": t} for t in transaction_ids],
    ).to_df()


class BatchSettings(BaseSettings):
    """Score a Parquet file or a time window of day-partitioned transactions; cache the scores in Feast.

    Every option can also be set as an environment variable RELEARN_BATCH_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BATCH_",
        cli_prog_name="python -m relearn.serving.batch",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    input: Path | None = Field(None, description="Parquet file or directory of transactions to score.")
    source: Path | None = Field(
        None, description="Root of day-partitioned transactions (with --start/--end)."
    )
    start: datetime | None = Field(None, description="Window start (inclusive) for --source.")
    end: datetime | None = Field(None, description="Window end (exclusive) for --source.")
    output: Path = Field(Path("scores.parquet"), description="Where the scores are written (Parquet).")
    model_uri: str = Field("models:/relearn-fraud@champion", description="Model, as for the predictor.")
    chunk_rows: int = Field(50_000, ge=1, description="Rows scored per step (progress bar unit).")
    push: bool = Field(True, description="Push the scores into the Feast online store (precomputed_scores).")
    progress: bool = Field(True, description="Show a progress bar.")

    def cli_cmd(self) -> None:
        """Run the batch scoring and print a summary."""
        summary = run(self)
        print("\n".join(f"{k:<14} {v}" for k, v in summary.items()))


def _transactions(settings: BatchSettings) -> pd.DataFrame:
    from relearn.data.io import read_transactions

    if settings.input is not None:
        tx = pd.read_parquet(settings.input)
        if tx.empty:
            raise SystemExit(f"no transactions to score in {settings.input}")
        return tx
    if settings.source is None:
        raise SystemExit("give --input, or --source with --start/--end")
    utc = [t.replace(tzinfo=UTC) if t and t.tzinfo is None else t for t in (settings.start, settings.end)]
    tx = read_transactions(settings.source, start=utc[0], end=utc[1])
    if tx.empty:
        where = f"{settings.source / 'transactions'} in [{utc[0] or '-'}, {utc[1] or '-'})"
        hint = ""
        if not (settings.source / "transactions").is_dir():
            hint = ": --source is the lake's root, the folder that holds transactions/ and labels/"
        raise SystemExit(f"no transactions to score in {where}{hint}")
    return tx


def refused_path(output: Path) -> Path:
    """Where the rows the data contract refuses are listed: beside the scores."""
    return output.with_name(f"{output.stem}.refused.parquet")


def _held_to_contract(tx: pd.DataFrame, output: Path) -> tuple[pd.DataFrame, int]:
    """The rows keeping the data contract, and how many were refused (listed in :func:`refused_path`).

    A row the transformer would refuse gets no score, so ``precomputed_scores`` never holds one serving
    could not give; the others are scored (one bad row upstream does not stop a backfill).
    """
    from relearn.data.contract import frame_violations

    bad = frame_violations(tx[list(REQUEST_FIELDS)])
    path = refused_path(output)
    path.unlink(missing_ok=True)
    if bad.empty:
        return tx, 0
    if len(bad) == len(tx):
        raise SystemExit(f"every row breaks the data contract, e.g. {bad.iloc[0]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = tx["transaction_id"].iloc[bad.index].astype(str).to_numpy()
    pd.DataFrame({"row": bad.index, "transaction_id": ids, "error": bad.to_numpy()}).to_parquet(
        path, index=False
    )
    log.warning(
        "rows refused by the data contract",
        extra={"refused": len(bad), "rows": len(tx), "first": bad.iloc[0], "listed": str(path)},
    )
    return tx.drop(index=bad.index).reset_index(drop=True), len(bad)


def run(settings: BatchSettings) -> dict[str, Any]:
    """Score, write, push; returns a summary (rows, model version, output, pushed)."""
    tx = _transactions(settings)
    missing = [c for c in REQUEST_FIELDS if c not in tx]
    if missing:
        raise SystemExit(f"input lacks column(s) {missing}")
    tx, refused = _held_to_contract(tx.reset_index(drop=True), settings.output)
    tx["event_timestamp"] = pd.to_datetime(tx["event_timestamp"], utc=True, format="ISO8601")

    from relearn.features.store import get_store, historical_features  # slow imports: after the checks
    from relearn.features.transforms import model_inputs
    from relearn.model.net import load_model, score
    from relearn.serving.predictor_model import resolve_artifact

    with tempfile.TemporaryDirectory(prefix="relearn-batch-") as tmp:
        directory, version = resolve_artifact(settings.model_uri, Path(tmp))
        net, preprocessor, metadata = load_model(directory)
    threshold = float(metadata.get("threshold", 0.5))
    store = get_store(RelearnSettings())
    scores = np.empty(len(tx))
    bar = progress_bar(total=len(tx), desc="relearn-batch", unit="tx", disable=not settings.progress)
    for begin in range(0, len(tx), settings.chunk_rows):
        chunk = tx.iloc[begin : begin + settings.chunk_rows]
        inputs = model_inputs(historical_features(store, chunk[list(REQUEST_FIELDS)]))
        scores[begin : begin + len(chunk)] = score(net, preprocessor, inputs)
        bar.update(len(chunk))
    bar.close()
    out = pd.DataFrame(
        {
            "transaction_id": tx["transaction_id"].astype(str),
            "user_id": tx["user_id"].astype(str),
            "event_timestamp": tx["event_timestamp"],
            "score": scores,
            "decision": (scores >= threshold).astype(np.int64),
            "model_version": str(version),
        }
    )
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(settings.output, index=False)
    if settings.push and len(out):
        store.apply(scores_definitions(settings.output.resolve()))
        store.write_to_online_store(SCORES_VIEW, out)
    log.info("batch scored", extra={"rows": len(out), "model_version": version})
    return {
        "rows": len(out),
        "model_version": version,
        "flagged": int(out["decision"].sum()),
        "refused": f"{refused} (see {refused_path(settings.output)})" if refused else 0,
        "output": str(settings.output.resolve()),
        "pushed": f"feast view {SCORES_VIEW}" if settings.push else "no",
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m relearn.serving.batch``."""
    configure_logging()
    CliApp.run(BatchSettings, cli_args=argv)


if __name__ == "__main__":
    main()
