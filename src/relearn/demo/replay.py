"""Replay the live stream through the gRPC endpoint at a steady rate, with chargebacks arriving later.

The replay is the outside world. It sends each scored transaction as a v2 ``ModelInfer`` call to the
transformer (which adds it to the streaming state), and before it, to the feature feed, the transactions
that are not scored and the chargebacks received up to that moment in the stream's clock — so each request
is served the features the pandas engine computes for it, and no feature value is written by the replay.
Chargebacks also go to the drift detector once the stream's clock passes their arrival; there a chargeback
arrives *now*: its timestamp is the wall-clock time it is posted, the clock the serving side stamps
predictions with. Every answer is recorded (latency, status, serving version, score).

A scenario may send records that break the data contract (``data_bug_units``): the transformer must refuse
each with INVALID_ARGUMENT, and the feed would refuse a batch holding one, so the replay leaves those out of
the feed and records which requests it expects refused. A refusal of a valid record, or an answer to an
invalid one, is a failure (:func:`failed`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd

from relearn.data import contract
from relearn.data.schema import REQUEST_FIELDS

log = logging.getLogger(__name__)


@dataclass
class Record:
    """What happened to each replayed transaction (arrays indexed like the stream)."""

    n: int
    sent: np.ndarray = field(init=False)  # wall-clock send time (epoch s); NaN: not sent
    latency: np.ndarray = field(init=False)  # seconds; NaN: no answer (yet)
    code: np.ndarray = field(init=False)  # 0 OK, else the gRPC status code; -1 no answer (yet)
    score: np.ndarray = field(init=False)
    version: np.ndarray = field(init=False)
    invalid: np.ndarray = field(init=False)  # breaks the data contract: must be refused

    def __post_init__(self) -> None:
        self.sent = np.full(self.n, np.nan)
        self.latency = np.full(self.n, np.nan)
        self.code = np.full(self.n, -1, dtype=np.int16)
        self.score = np.full(self.n, np.nan)
        self.version = np.full(self.n, "", dtype=object)
        self.invalid = np.zeros(self.n, dtype=bool)

    def frame(self) -> pd.DataFrame:
        """The records as columns."""
        return pd.DataFrame(
            {
                "sent": self.sent,
                "latency_s": self.latency,
                "code": self.code,
                "score": self.score,
                "model_version": self.version,
                "invalid": self.invalid,
            }
        )


INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def refused(code: Any, invalid: Any) -> np.ndarray:
    """Requests refused as the contract says (INVALID_ARGUMENT for a record that breaks it)."""
    return (np.asarray(code) == INVALID_ARGUMENT) & np.asarray(invalid, dtype=bool)


def failed(code: Any, invalid: Any) -> np.ndarray:
    """Requests that failed: an error other than the contract's refusal, or an invalid record answered."""
    code, invalid = np.asarray(code), np.asarray(invalid, dtype=bool)
    return ((code > 0) & ~refused(code, invalid)) | ((code == 0) & invalid)


def infer_request(row: Any, model_name: str) -> Any:
    """The v2 gRPC request of one transaction: one input per request field (``amount`` FP64)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model_name, id=str(row.transaction_id))
    for name in REQUEST_FIELDS:
        value = getattr(row, name)
        tensor = request.inputs.add(name=name, shape=[1])
        if name == "amount":
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.append(float(value))
        else:
            tensor.datatype = "BYTES"
            if contract.is_null(value):
                text = ""  # a BYTES tensor's null (the contract's reading)
            else:
                text = value.isoformat() if name == "event_timestamp" else str(value)
            tensor.contents.bytes_contents.append(text.encode())
    return request


def response_score(reply: Any) -> float:
    """The fraud score in a transformer reply (raw or typed contents)."""
    names = [o.name for o in reply.outputs]
    i = names.index("score")
    if reply.raw_output_contents:
        return float(np.frombuffer(reply.raw_output_contents[i], dtype=np.float32)[0])
    return float(reply.outputs[i].contents.fp32_contents[0])


class Replay:
    """Sends the stream; ``position`` and ``sim_time`` say how far it got.

    Args:
        stream: Served transactions in time order with request fields and ``is_fraud``.
        labels: Their chargebacks (``transaction_id``, ``chargeback_timestamp``), in arrival order.
        grpc_target: ``host:port`` of the transformer's gRPC endpoint.
        detector_url: Base URL of the drift detector (chargebacks go to ``/labels``).
        rate: Requests per second.
        feed_url: Base URL of the feature feed (``/transactions``, ``/chargebacks``).
        feed: The live transactions that are not scored, in time order.
        chargebacks: Every chargeback received live (``transaction_id``, ``merchant_id``,
            ``received_timestamp``), in arrival order.
        model_name: Model name of the calls.
    """

    def __init__(
        self,
        stream: pd.DataFrame,
        labels: pd.DataFrame,
        grpc_target: str,
        detector_url: str,
        rate: float,
        feed_url: str,
        feed: pd.DataFrame,
        chargebacks: pd.DataFrame,
        model_name: str = "relearn-fraud",
    ) -> None:
        self.stream = stream
        self.labels = labels
        self.rate = rate
        self.detector_url = detector_url.rstrip("/")
        self.feed_url = feed_url.rstrip("/")
        bad = contract.frame_violations(feed)
        if len(bad):  # the feed refuses a batch holding one; what the contract refuses never reaches it
            log.warning(
                "%d unscored transactions break the data contract, not fed: %s", len(bad), bad.iloc[0]
            )
        self.feed_refused = len(bad)
        self.feed = feed.drop(feed.index[bad.index.to_numpy(dtype=int)]).reset_index(drop=True)
        self.chargebacks = chargebacks
        self._feed_times = self.feed["event_timestamp"].dt.tz_convert(None).to_numpy()
        self._chargeback_times = chargebacks["received_timestamp"].dt.tz_convert(None).to_numpy()
        self.fed = self.chargebacks_fed = 0
        self.model_name = model_name
        self.record = Record(len(stream))
        self.record.invalid[contract.frame_violations(stream).index.to_numpy(dtype=int)] = True
        self.position = 0
        self.labels_sent = 0
        self.failures: list[str] = []
        self._channel = grpc.insecure_channel(grpc_target)
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

        self._stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._times = stream["event_timestamp"]
        self._label_times = labels["chargeback_timestamp"].dt.tz_convert(None).to_numpy()
        self._in_flight = threading.Semaphore(256)
        self.held = threading.Event()  # set: the stream's clock stands still (see :meth:`run`)

    @property
    def sim_time(self) -> pd.Timestamp | None:
        """The stream's clock: the time of the last transaction sent."""
        return self._times.iloc[self.position - 1] if self.position else None

    def _feed_until(self, client: httpx.Client, moment: pd.Timestamp) -> None:
        """Post the unscored transactions and the chargebacks before ``moment`` to the feature feed.

        Synchronous, before the request at ``moment`` is sent: its features must include them. The two
        kinds are posted in runs, in event-time order, so the feed sees its stream in order.
        """
        cut = np.datetime64(moment.tz_convert(None))
        feed_due = int(np.searchsorted(self._feed_times, cut, side="left"))
        chargebacks_due = int(np.searchsorted(self._chargeback_times, cut, side="left"))
        while self.fed < feed_due or self.chargebacks_fed < chargebacks_due:
            # The next run of one kind: up to the other kind's next event (or everything due).
            next_tx = self._feed_times[self.fed] if self.fed < feed_due else None
            next_cb = (
                self._chargeback_times[self.chargebacks_fed]
                if self.chargebacks_fed < chargebacks_due
                else None
            )
            if next_cb is None or (next_tx is not None and next_tx <= next_cb):
                end = (
                    feed_due if next_cb is None else int(np.searchsorted(self._feed_times, next_cb, "right"))
                )
                self._post(client, "transactions", self.feed.iloc[self.fed : min(end, feed_due)])
                self.fed = min(end, feed_due)
            else:
                bound = chargebacks_due
                if next_tx is not None:
                    bound = min(bound, int(np.searchsorted(self._chargeback_times, next_tx, "left")))
                self._post(client, "chargebacks", self.chargebacks.iloc[self.chargebacks_fed : bound])
                self.chargebacks_fed = bound

    def _post(self, client: httpx.Client, kind: str, frame: pd.DataFrame) -> None:
        """One POST to the feed, retried on connection errors (idempotent: nothing counts twice)."""
        body = json.loads(frame.to_json(orient="records", date_format="iso", date_unit="us"))
        for attempt in range(5):
            try:
                client.post(f"{self.feed_url}/{kind}", json=body, timeout=10).raise_for_status()
                return
            except httpx.HTTPError as exc:
                refused = isinstance(exc, httpx.HTTPStatusError)
                detail = exc.response.text if refused else str(exc)
                if attempt == 4 or (refused and exc.response.is_client_error):
                    raise RuntimeError(f"the feature feed refused {kind}: {detail}") from exc
                time.sleep(0.5)

    def _post_labels(self, client: httpx.Client) -> None:
        """Post the chargebacks that have arrived by the stream's clock, stamped with the wall clock."""
        now = self.sim_time
        if now is None:
            return
        due = int(np.searchsorted(self._label_times, np.datetime64(now.tz_convert(None)), side="right"))
        if due <= self.labels_sent:
            return
        arrived = datetime.now(UTC).isoformat()
        batch = self.labels.iloc[self.labels_sent : due]
        body = [{"transaction_id": t, "chargeback_timestamp": arrived} for t in batch["transaction_id"]]
        try:
            client.post(f"{self.detector_url}/labels", json=body, timeout=10).raise_for_status()
            self.labels_sent = due
        except httpx.HTTPError as exc:  # retried on the next tick; labels are idempotent upserts
            log.warning("posting labels failed: %s", exc)

    def _send(self, i: int) -> None:
        row = self.stream.iloc[i]
        request = infer_request(row, self.model_name)
        self._in_flight.acquire()
        started = time.time()
        self.record.sent[i] = started
        future = self._stub.ModelInfer.future(request, timeout=10.0)

        def done(f: Any) -> None:
            try:
                try:
                    reply = f.result()
                    self.record.score[i] = response_score(reply)
                    self.record.version[i] = reply.model_version
                    self.record.code[i] = 0
                    what = "answered, but breaks the data contract"
                except grpc.RpcError as exc:
                    self.record.code[i] = exc.code().value[0]
                    what = f"{exc.code().name} {exc.details()}"
                if failed(self.record.code[i], self.record.invalid[i]) and len(self.failures) < 20:
                    self.failures.append(f"{row.transaction_id}: {what}")  # one rule: :func:`failed`
            finally:
                self.record.latency[i] = time.time() - started
                self._in_flight.release()

        future.add_done_callback(done)

    def run(self, stop: threading.Event, until: Callable[[], bool] | None = None) -> None:
        """Send at ``rate`` until the stream ends, ``stop`` is set or ``until()`` holds.

        While ``held`` is set nothing is sent, so the stream's clock (and the chargebacks' arrival with it)
        stands still; the pace restarts from the moment it is cleared.
        """
        next_at = time.monotonic()
        with httpx.Client() as client:
            last_labels = 0.0
            while self.position < len(self.stream) and not stop.is_set():
                if until is not None and until():
                    break
                if self.held.is_set():
                    stop.wait(0.1)
                    next_at = time.monotonic()
                    continue
                self._feed_until(client, self._times.iloc[self.position])
                self._send(self.position)
                self.position += 1
                if time.monotonic() - last_labels > 1.0:
                    self._post_labels(client)
                    last_labels = time.monotonic()
                next_at += 1.0 / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                else:
                    next_at = max(next_at, time.monotonic() - 1.0)  # catch up, but no long bursts
            self._post_labels(client)

    def drain(self, timeout: float = 15.0) -> None:
        """Wait for the answers still in flight, then close the channel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and np.any(self.record.code[: self.position] == -1):
            time.sleep(0.05)
        self._channel.close()
