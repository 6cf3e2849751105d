"""The feature feed: transactions that are not scored and chargebacks, into the streaming state over HTTP.

The transformer adds every transaction it scores. Everything else that moves an entity's features comes
in here: authorisations the model does not score (they still count in a card's velocity), and chargebacks
(the merchant's chargeback rate, by received time). In a cluster the bank's transaction and dispute streams
are consumed into these endpoints; locally the demo's replay posts to them.

* ``POST /transactions`` — a JSON list of transaction records as the transformer takes them:
  ``{transaction_id, event_timestamp, user_id, merchant_id, amount, currency, merchant_category?, channel?,
  country?, device_id?}``;
* ``POST /chargebacks`` — a JSON list of ``{transaction_id, merchant_id, received_timestamp}``;
* ``GET /healthz``, ``GET /metrics`` (Prometheus).

Both are idempotent per ``transaction_id``. Records are held to the data contract the pipeline validates
(:mod:`relearn.data.contract`): a bad record refuses the whole batch with a 400 ``{"error": "row N: field
'...' must be ... (got ...)"}`` in the pipeline's words, and nothing of it is stored.
``python -m relearn.features.feed --help`` lists the options.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.data import contract
from relearn.errors import InvalidRequest, RelearnError, Unavailable, rest_handler
from relearn.features.state import Event, OnlineState, Rejected, open_state

log = logging.getLogger(__name__)


class FeedSettings(BaseSettings):
    """relearn feature feed: unscored transactions and chargebacks into the streaming state.

    The state is configured by RELEARN_STATE_*; these options also by RELEARN_FEED_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_FEED_", cli_prog_name="python -m relearn.features.feed"
    )

    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 in a pod).")
    port: int = Field(8086, ge=1, le=65535, description="HTTP port (8090 is the drift detector's).")
    max_batch: int = Field(10_000, ge=1, description="Most records per request.")


def _columns(records: list[dict[str, Any]], rules: tuple[contract.Rule, ...]) -> dict[str, list]:
    """The records column by column, refusing fields the contract does not know (ValueError)."""
    known = {rule.field for rule in rules}
    for i, record in enumerate(records):
        if extra := sorted(set(record) - known):
            raise ValueError(f"row {i}: unexpected field(s) {extra}")
    return {name: [record.get(name) for record in records] for name in known}


def transaction_events(records: list[dict[str, Any]]) -> list[Event]:
    """The state's events of transaction records held to the data contract (``contract.Violation``).

    The fields the state does not keep (currency, merchant_category, channel) are checked all the same: a
    feed posts the records the transformer would score.
    """
    parsed = contract.check_columns(_columns(records, contract.TRANSACTION), len(records))
    fields = ("transaction_id", "event_timestamp", "user_id", "merchant_id", "amount", "country", "device_id")
    return [Event(*values) for values in zip(*(parsed[f] for f in fields), strict=True)]


def chargeback_items(records: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """``(merchant_id, transaction_id, received µs)`` of chargeback records held to the data contract."""
    rules = contract.CHARGEBACK
    parsed = contract.check_columns(_columns(records, rules), len(records), rules)
    return list(
        zip(parsed["merchant_id"], parsed["transaction_id"], parsed["received_timestamp"], strict=True)
    )


def create_app(state: OnlineState, settings: FeedSettings) -> Any:
    """The ASGI app over one state."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    records = Counter(
        "relearn_feature_feed_records_total", "Records posted to the feature feed.", ["kind", "outcome"]
    )
    app = FastAPI(title="relearn feature feed")
    app.add_exception_handler(RelearnError, rest_handler)
    lock = asyncio.Lock()  # one writer per process: the state's stream clock advances in order

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def refused(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": exc.detail}  # the servers' (open inference protocol) error body, not {"detail"}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    def parse(parser: Any, records: list[dict[str, Any]]) -> list:
        too_many(len(records))
        try:
            return parser(records)
        except ValueError as exc:  # contract.Violation included: the pipeline's words, with the row
            raise InvalidRequest(str(exc)) from None

    def too_many(n: int) -> None:
        if n > settings.max_batch:
            raise InvalidRequest(f"{n} records exceed max_batch {settings.max_batch}", status=413)

    async def apply(kind: str, n: int, call: Any) -> dict[str, int]:
        try:
            async with lock:
                result = await asyncio.to_thread(call)
        except Rejected as exc:
            records.labels(kind=kind, outcome=exc.reason).inc(n)
            raise InvalidRequest(str(exc)) from None
        except Exception as exc:  # the state's store is down or restarting: the sender retries later
            records.labels(kind=kind, outcome="unavailable").inc(n)
            log.warning("streaming state unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise Unavailable(f"streaming state unavailable: {type(exc).__name__}") from None
        records.labels(kind=kind, outcome="ok").inc(n)
        return {"accepted": n, **({"new": result} if isinstance(result, int) else {})}

    @app.post("/transactions")
    async def transactions(body: list[dict[str, Any]]) -> dict[str, int]:
        """Unscored transactions into the state (a JSON list, once per transaction_id); 400 names a field."""
        events = parse(transaction_events, body)
        return await apply("transaction", len(events), lambda: state.ingest(events))

    @app.post("/chargebacks")
    async def chargebacks(body: list[dict[str, Any]]) -> dict[str, int]:
        """Chargebacks into the merchants' state (by received time; once per transaction_id)."""
        items = parse(chargeback_items, body)
        return await apply("chargeback", len(items), lambda: state.add_chargebacks(items))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics of the feed."""
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def main() -> None:
    """Serve the feed until interrupted."""
    import uvicorn

    from relearn.logs import configure_logging

    configure_logging()
    settings = FeedSettings(_cli_parse_args=True)
    state = open_state()
    try:
        uvicorn.run(create_app(state, settings), host=settings.host, port=settings.port, log_config=None)
    finally:
        state.close()


if __name__ == "__main__":
    main()
