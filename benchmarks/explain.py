"""``python -m benchmarks.explain``: latency of the explainer's ``:explain`` beside ``:predict``.

One run starts the predictor and the explainer on loopback with the same registered champion (trained now,
or ``--home``), then measures in interleaved rounds (every cell of round 1, then of round 2, ...) one
client sending requests back to back over keep-alive HTTP:

* ``predictor :predict``  v1, model inputs (the predictor's own path, no payload log);
* ``explainer :explain``  v1, the same model inputs (Integrated Gradients, ``--steps`` points);
* ``explainer :explain``  v1, raw transactions (plus the streaming-state read and the feature formulas).

Medians over the rounds of each cell's p50/p95/p99, and the ratio of ``:explain``'s p50 to ``:predict``'s.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from benchmarks.serving import prepare_home, sample_data
from benchmarks.serving_proc import HOST, MODEL, PLATFORM_PY, ROOT, Server, free_port
from relearn.data.schema import REQUEST_FIELDS


class ExplainBenchSettings(BaseSettings):
    """Latency of :explain (relearn's KServe explainer) against :predict (the predictor), same run."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_BENCH_EXPLAIN_", cli_prog_name="python -m benchmarks.explain", cli_kebab_case=True
    )

    home: Path | None = Field(None, description="RELEARN_HOME with a champion (default: train one now).")
    batch: list[int] = Field([1, 8], description="Rows per request.")
    requests: int = Field(200, ge=10, description="Requests per cell and round.")
    rounds: int = Field(3, ge=1, description="Interleaved rounds; the table shows medians over them.")
    output: Path | None = Field(None, description="Also write the results as JSON here.")

    def cli_cmd(self) -> None:
        """Run the benchmark and print its table."""
        print(render(run(self)))


@dataclass
class Cell:
    what: str
    batch: int
    url: str
    body: bytes


def _body(rows: list[dict]) -> bytes:
    return json.dumps({"instances": rows}).encode()


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def measure(client: httpx.Client, cell: Cell, requests: int) -> dict[str, float]:
    """Back-to-back requests from one client; each must answer 200."""
    for _ in range(10):  # warm-up: connection, first-call paths
        response = client.post(cell.url, content=cell.body)
        if response.status_code != 200:
            raise RuntimeError(f"{cell.what}: {response.status_code} {response.text}")
    seconds = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.post(cell.url, content=cell.body)
        seconds.append(time.perf_counter() - start)
        response.raise_for_status()
    return {**_percentiles(seconds), "req_s": requests / sum(seconds)}


def run(settings: ExplainBenchSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="relearn-bench-explain-") as tmp_name:
        tmp = Path(tmp_name)
        home = prepare_home(settings, tmp)
        raw, inputs, _ = sample_data(home)
        env = {"RELEARN_HOME": str(home), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PYTHONUNBUFFERED": "1"}
        model = ["--model-uri", f"models:/{MODEL}@champion", "--log-level", "WARNING"]
        servers = {}
        for name, module in (
            ("predictor", "relearn.serving.predictor"),
            ("explainer", "relearn.serving.explainer"),
        ):
            http, grpc = free_port(), free_port()
            cmd = [
                PLATFORM_PY,
                "-m",
                module,
                "--host",
                HOST,
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc),
            ]
            servers[name] = Server(name, [*cmd, *model], http, grpc, env)
        cells = []
        for batch in settings.batch:
            model_rows = inputs.head(batch).to_dict("records")
            raw_rows = json.loads(
                raw[list(REQUEST_FIELDS)].head(batch).to_json(orient="records", date_format="iso")
            )
            base = {n: f"http://{HOST}:{s.http_port}/v1/models/{MODEL}" for n, s in servers.items()}
            cells += [
                Cell(
                    "predictor :predict (model inputs)",
                    batch,
                    f"{base['predictor']}:predict",
                    _body(model_rows),
                ),
                Cell(
                    "explainer :explain (model inputs)",
                    batch,
                    f"{base['explainer']}:explain",
                    _body(model_rows),
                ),
                Cell(
                    "explainer :explain (transactions)",
                    batch,
                    f"{base['explainer']}:explain",
                    _body(raw_rows),
                ),
            ]
        results: dict[tuple[str, int], list[dict[str, float]]] = {(c.what, c.batch): [] for c in cells}
        try:
            for server in servers.values():
                server.start(tmp)
                server.wait_ready()
            with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
                for _ in range(settings.rounds):
                    for cell in cells:
                        results[(cell.what, cell.batch)].append(measure(client, cell, settings.requests))
        finally:
            for server in servers.values():
                server.stop()
    rows = []
    for (what, batch), rounds in results.items():
        medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        rows.append({"what": what, "batch": batch, **medians})
    for row in rows:
        predict = next(r for r in rows if r["batch"] == row["batch"] and r["what"].startswith("predictor"))
        row["p50_vs_predict"] = row["p50_ms"] / predict["p50_ms"]
    out = {"rows": rows, "requests": settings.requests, "rounds": settings.rounds}
    if settings.output:
        settings.output.write_text(json.dumps(out, indent=2))
    return out


def render(result: dict) -> str:
    """The rows as an aligned table."""
    head = ("path", "rows", "p50 ms", "p95 ms", "p99 ms", "req/s", "p50 vs :predict")
    lines = [
        (r["what"], str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}",
         f"{r['req_s']:.0f}", f"{r['p50_vs_predict']:.1f}x")
        for r in result["rows"]
    ]  # fmt: skip
    widths = [max(len(x) for x in column) for column in zip(head, *lines, strict=True)]
    text = [
        " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (head, *lines)
    ]
    rounds, requests = result["rounds"], result["requests"]
    note = f"one client, back to back; medians of {rounds} interleaved rounds of {requests} requests each"
    return "\n".join([text[0], "-" * len(text[0]), *text[1:], note])


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help``) and run."""
    CliApp.run(ExplainBenchSettings, cli_args=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
