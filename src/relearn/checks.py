"""Post-install checks of a relearn release (the chart's ``helm test`` hooks): ``python -m relearn.checks``.

Each check talks to a service the way in-cluster clients do and prints one JSON line (``check``, ``ok``,
``url``, ``status``, ``attempts``, ``seconds``, ``detail``, and a ``hint`` when it failed); the exit code is 1
when any check failed, 2 on a usage error. Checks retry until ``--deadline-seconds`` (counted from the start,
shared by all checks): pods may still be starting. Connection errors, timeouts, 404, 429 and 5xx answers are
retried; any other answer is final (a 403 from MLflow does not go away by waiting).

The checks are listed in :data:`CHECK_HELP` (and by ``--help``); without CHECK arguments, every check whose
service URL is set runs. Every option is also an environment variable ``RELEARN_CHECK_<OPTION>`` (e.g.
``RELEARN_CHECK_MLFLOW_URL``). Standard library only: it runs in any relearn image. What a check sends and
accepts (its results, the example transaction, the prediction's verdict) is :mod:`relearn.check_answers`.
It stays on argparse, not :mod:`relearn.commands` (pydantic-settings), for the helm-test pod's sake.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from relearn.check_answers import (
    Answer,
    CheckFailed,
    NotYet,
    Result,
    example_transaction,
    validate_prediction,
)

ENV_PREFIX = "RELEARN_CHECK_"
MLFLOW_API_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
RETRYABLE_STATUS = frozenset({404, 408, 429})  # and every 5xx
CHECK_HELP = """\
checks:
  mlflow-health      GET <mlflow>/health is 200.
  mlflow-api         GET <mlflow>/api/2.0/mlflow/experiments/search?max_results=1 is 200 with JSON, sent
                     with the URL's own Host (the Service FQDN): MLflow >= 3.5 answers 403 to a Host
                     outside its --allowed-hosts while /health stays 200.
  drift-health       GET <drift>/healthz is 200.
  drift-ready        GET <drift>/ready is 200 (the champion's reference sample is loaded).
  drift-ingest-ready GET <drift-ingest>/ready is 200 (an ingest replica answers on the Service).
  transformer-ready  GET <transformer>/v2/health/ready is 200.
  predict            POST <transformer>/v1/models/<model>:predict with one transaction answers a score
                     in [0, 1], a boolean decision, the transaction_id sent and a model version.

Without CHECK arguments, every check whose service URL is set runs."""


class Checker:
    """Runs the checks against the configured URLs, with retries until one shared deadline."""

    def __init__(self, options: argparse.Namespace, out: Callable[[str], None] = print) -> None:
        self.options = options
        self.out = out
        self.deadline = time.monotonic() + options.deadline_seconds

    # ------------------------------------------------------------------------------------------ HTTP
    def request(self, url: str, body: dict[str, Any] | None = None) -> Answer:
        """GET (or POST JSON) ``url``; the Host header is the URL's own unless ``--host-header`` is set."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.options.host_header:
            request.add_header("Host", self.options.host_header)
        try:
            with urllib.request.urlopen(request, timeout=self.options.request_timeout_seconds) as response:
                return Answer(response.status, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read())
        except OSError as error:  # refused, DNS, timeout (URLError is an OSError): not up yet
            raise NotYet(f"{type(error).__name__}: {getattr(error, 'reason', error)}") from None

    def expect_ok(self, url: str, body: dict[str, Any] | None = None) -> Answer:
        """The answer if it is a 200; NotYet for retryable answers, CheckFailed for the others."""
        answer = self.request(url, body)
        if answer.status == 200:
            return answer
        text = answer.body[:300].decode("utf-8", "replace").strip()
        message = f"HTTP {answer.status}: {text}" if text else f"HTTP {answer.status}"
        if answer.status >= 500 or answer.status in RETRYABLE_STATUS:
            raise NotYet(message, answer.status)
        raise CheckFailed(message, answer.status)

    # ------------------------------------------------------------------------------------------ checks
    def run(
        self, name: str, url: str, attempt: Callable[[], tuple[int, str, dict[str, Any]]], hint: str
    ) -> Result:
        """Call ``attempt`` until it passes, fails for good, or the deadline passes; print the result line."""
        start, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            try:
                status, detail, extra = attempt()
                result = Result(
                    name, True, url, status, attempts, time.monotonic() - start, detail, extra=extra
                )
                break
            except NotYet as error:
                left = self.deadline - time.monotonic()
                if left > self.options.interval_seconds:
                    print(
                        f"{name}: not yet ({error}); retrying, {left:.0f} s left", file=sys.stderr, flush=True
                    )
                    time.sleep(self.options.interval_seconds)
                    continue
                detail = f"{error} (still failing at the deadline)"
                result = Result(
                    name, False, url, error.status, attempts, time.monotonic() - start, detail, hint
                )
                break
            except CheckFailed as error:
                result = Result(
                    name, False, url, error.status, attempts, time.monotonic() - start, str(error), hint
                )
                break
        self.out(result.line())
        return result

    def health(self, name: str, base: str, path: str, hint: str) -> Result:
        """A health endpoint that must answer 200."""
        url = _join(base, path)

        def attempt() -> tuple[int, str, dict[str, Any]]:
            answer = self.expect_ok(url)
            return answer.status, answer.body[:200].decode("utf-8", "replace").strip(), {}

        return self.run(name, url, attempt, hint)

    def mlflow_api(self) -> Result:
        """MLflow's REST API with the in-cluster Host header."""
        url = _join(self.options.mlflow_url, MLFLOW_API_PATH)
        host = self.options.host_header or _url_host(url)

        def attempt() -> tuple[int, str, dict[str, Any]]:
            answer = self.expect_ok(url)
            try:
                experiments = json.loads(answer.body).get("experiments", [])
            except (ValueError, AttributeError):
                raise CheckFailed(
                    f"answer is not MLflow JSON: {answer.body[:200]!r}", answer.status
                ) from None
            return (
                answer.status,
                f"experiments/search answered with Host {host}",
                {"experiments": len(experiments)},
            )

        hint = (
            f"MLflow refuses the Host header {host!r}: add it to the server's --allowed-hosts "
            "(MLFLOW_SERVER_ALLOWED_HOSTS; the Host includes the port, e.g. "
            "'<svc>.<ns>.svc.cluster.local:5000'). /health is exempt, so the pod still looks Ready."
        )
        return self.run("mlflow-api", url, attempt, hint)

    def predict(self) -> Result:
        """One transaction through the transformer over v1 REST."""
        url = _join(self.options.transformer_url, f"/v1/models/{self.options.model_name}:predict")

        def attempt() -> tuple[int, str, dict[str, Any]]:
            transaction = example_transaction()
            answer = self.expect_ok(url, {"instances": [transaction]})
            try:
                extra = validate_prediction(answer.body, transaction["transaction_id"])
            except CheckFailed as error:
                raise CheckFailed(str(error), answer.status) from None
            return answer.status, f"scored {transaction['transaction_id']}", extra

        hint = (
            "The transformer must reach Feast's online store and the predictor (gRPC), and the predictor "
            "must have loaded a registered model: kubectl get inferenceservice, then the logs of the "
            "transformer and predictor pods."
        )
        return self.run("predict", url, attempt, hint)


CHECKS: dict[str, tuple[str, Callable[[Checker], Result]]] = {
    "mlflow-health": (
        "mlflow_url",
        lambda c: c.health("mlflow-health", c.options.mlflow_url, "/health", "Is the MLflow pod running?"),
    ),
    "mlflow-api": ("mlflow_url", Checker.mlflow_api),
    "drift-health": (
        "drift_url",
        lambda c: c.health(
            "drift-health", c.options.drift_url, "/healthz", "Is the drift-detector pod running?"
        ),
    ),
    "drift-ready": (
        "drift_url",
        lambda c: c.health(
            "drift-ready",
            c.options.drift_url,
            "/ready",
            "The detector loads the champion's reference sample from MLflow: is a champion registered "
            "(run the training pipeline once) and is MLflow reachable from the detector?",
        ),
    ),
    "drift-ingest-ready": (
        "drift_ingest_url",
        lambda c: c.health(
            "drift-ingest-ready",
            c.options.drift_ingest_url,
            "/ready",
            "An ingest replica starts once it reached the shared log's PostgreSQL (MLflow's, with PGUSER and "
            "PGPASSWORD from its Secret): kubectl logs of the drift-ingest pods.",
        ),
    ),
    "transformer-ready": (
        "transformer_url",
        lambda c: c.health(
            "transformer-ready",
            c.options.transformer_url,
            "/v2/health/ready",
            "kubectl get inferenceservice, then the transformer pod's logs (Feast registry, Redis).",
        ),
    ),
    "predict": ("transformer_url", Checker.predict),
}


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _url_host(url: str) -> str:
    """The Host header urllib sends for ``url`` (host, and the port unless it is the scheme's default)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def parser() -> argparse.ArgumentParser:
    """The command line; each option's default comes from RELEARN_CHECK_<OPTION>."""
    p = argparse.ArgumentParser(
        prog="python -m relearn.checks",
        description="Post-install checks of a relearn release (helm test): health endpoints, MLflow's API "
        "with the in-cluster Host, a prediction through the transformer. One JSON line per check; exit code "
        "1 if any failed. Every option is also RELEARN_CHECK_<OPTION> (e.g. RELEARN_CHECK_MLFLOW_URL).",
        epilog=CHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checks", nargs="*", metavar="CHECK", help="Checks to run (see below).")
    p.add_argument("--mlflow-url", default=_env("mlflow_url", ""), help="MLflow base URL (its Service FQDN).")
    p.add_argument("--drift-url", default=_env("drift_url", ""), help="Drift-detector base URL.")
    p.add_argument(
        "--drift-ingest-url",
        default=_env("drift_ingest_url", ""),
        help="Base URL of the drift detector's ingest replicas (their Service), when they run.",
    )
    p.add_argument(
        "--transformer-url",
        default=_env("transformer_url", ""),
        help="Transformer base URL, e.g. http://<isvc>-transformer.<ns>.svc.cluster.local.",
    )
    p.add_argument("--model-name", default=_env("model_name", "relearn-fraud"), help="Model name in v1 URLs.")
    p.add_argument(
        "--host-header",
        default=_env("host_header", ""),
        help="Send this Host header instead of the URL's own (tests and rehearsals on loopback only).",
    )
    p.add_argument(
        "--deadline-seconds",
        type=float,
        default=float(_env("deadline_seconds", 120)),
        help="Retry failing checks until this many seconds after the start (shared by all checks).",
    )
    p.add_argument(
        "--interval-seconds",
        type=float,
        default=float(_env("interval_seconds", 5)),
        help="Pause between two attempts of a check.",
    )
    p.add_argument(
        "--request-timeout-seconds",
        type=float,
        default=float(_env("request_timeout_seconds", 10)),
        help="Timeout of one HTTP request.",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; 0 when all passed, 1 when one failed, 2 on a usage error."""
    p = parser()
    options = p.parse_args(argv)
    names = options.checks or [n for n in (_env("checks", "") or "").split(",") if n.strip()]
    names = [n.strip() for n in names]
    if not names:
        names = [name for name, (needs, _) in CHECKS.items() if getattr(options, needs)]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    if not names:
        p.error("no check to run: set a service URL (--mlflow-url, --drift-url or --transformer-url)")
    missing = sorted({CHECKS[n][0] for n in names if not getattr(options, CHECKS[n][0])})
    if missing:
        flags = [f"--{m.replace('_', '-')} (or {ENV_PREFIX}{m.upper()})" for m in missing]
        p.error(f"the checks asked need {', '.join(flags)}")
    checker = Checker(options)
    results = [CHECKS[name][1](checker) for name in names]
    failed = [r.check for r in results if not r.ok]
    print(json.dumps({"summary": True, "passed": len(results) - len(failed), "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
