"""The feature feed: transactions that are not scored and chargebacks, into the streaming state over HTTP.

The transformer adds every transaction it scores. Everything else that moves an entity's features comes
in here: authorisations the model does not score (they still count in a card's velocity), and chargebacks
(the merchant's chargeback rate, by received time). In a cluster the bank's transaction and dispute streams
are consumed into these endpoints; locally the demo's replay posts to them.

* ``POST /transactions`` — a JSON list of ``{transaction_id, event_timestamp, user_id, merchant_id, amount,
  country?, device_id?}``;
* ``POST /chargebacks`` — a JSON list of ``{transaction_id, merchant_id, received_timestamp}``;
* ``GET /healthz``, ``GET /metrics`` (Prometheus).

Both are idempotent per ``transaction_id``; a bad record refuses the whole batch with a 4xx naming the field,
and nothing of it is stored. ``python -m relearn.features.feed --help`` lists the options.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class Transaction(BaseModel):
    """A transaction as the feed takes it."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1)
    event_timestamp: datetime
    user_id: str = Field(min_length=1)
    merchant_id: str = Field(min_length=1)
    amount: float | None = None
    country: str | None = None
    device_id: str | None = None
    # The rest of a scoring request's fields: accepted (a feed can post the same records), not stored.
    currency: str | None = None
    merchant_category: str | None = None
    channel: str | None = None

    @field_validator("amount")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def event(self) -> Event:
        """The state's event (naive times are UTC)."""
        from relearn.features.transforms import epoch_us

        t = int(epoch_us([self.event_timestamp])[0])
        place = (self.country or "", self.device_id or "")
        return Event(self.transaction_id, t, self.user_id, self.merchant_id, self.amount, *place)


class Chargeback(BaseModel):
    """A chargeback: which transaction, at which merchant, received when."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1)
    merchant_id: str = Field(min_length=1)
    received_timestamp: datetime

    def item(self) -> tuple[str, str, int]:
        """``(merchant_id, transaction_id, received µs)``."""
        from relearn.features.transforms import epoch_us

        return self.merchant_id, self.transaction_id, int(epoch_us([self.received_timestamp])[0])


def create_app(state: OnlineState, settings: FeedSettings) -> Any:
    """The ASGI app over one state."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

    records = Counter(
        "relearn_feature_feed_records_total", "Records posted to the feature feed.", ["kind", "outcome"]
    )
    app = FastAPI(title="relearn feature feed")
    lock = asyncio.Lock()  # one writer per process: the state's stream clock advances in order

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=400)

    def too_many(n: int) -> None:
        if n > settings.max_batch:
            raise HTTPException(413, f"{n} records exceed max_batch {settings.max_batch}")

    async def apply(kind: str, n: int, call: Any) -> dict[str, int]:
        too_many(n)
        try:
            async with lock:
                result = await asyncio.to_thread(call)
        except Rejected as exc:
            records.labels(kind=kind, outcome=exc.reason).inc(n)
            raise HTTPException(400, str(exc)) from None
        except Exception as exc:  # the state's store is down or restarting: the sender retries later
            records.labels(kind=kind, outcome="unavailable").inc(n)
            log.warning("streaming state unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise HTTPException(503, f"streaming state unavailable: {type(exc).__name__}") from None
        records.labels(kind=kind, outcome="ok").inc(n)
        return {"accepted": n, **({"new": result} if isinstance(result, int) else {})}

    @app.post("/transactions")
    async def transactions(body: list[Transaction]) -> dict[str, int]:
        events = [t.event() for t in body]
        return await apply("transaction", len(events), lambda: state.ingest(events))

    @app.post("/chargebacks")
    async def chargebacks(body: list[Chargeback]) -> dict[str, int]:
        items = [c.item() for c in body]
        return await apply("chargeback", len(items), lambda: state.add_chargebacks(items))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
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
