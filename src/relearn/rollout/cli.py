"""``kubectl relearn``: canary and shadow rollouts of the fraud model from the command line.

Installed as the console script ``kubectl-relearn``, so kubectl finds it as a plugin::

    kubectl relearn status
    kubectl relearn --backend local register 7 --rest http://127.0.0.1:8092 --grpc 127.0.0.1:8093
    kubectl relearn canary start 7 --percent 10
    kubectl relearn shadow start 7 --percent 20
    kubectl relearn promote            # or: kubectl relearn rollback --reason "p99 too high"
    kubectl relearn history
    kubectl relearn experiment start ab1 --arm 7=50 --arm 8=50 --control 7   # also status|stop|list|analyze
    kubectl relearn experiment promote ab1   # the winner as the canary
    kubectl relearn experiment start b1 --mode bandit --arm 7 --arm 8 --arm 9 --control 7   # + update-bandit

``--backend kubernetes`` (default) patches the InferenceService / VirtualService through the API, exactly as
``kubectl patch isvc ... canaryTrafficPercent`` does; ``--backend local`` drives the local router's state
file, where ``register`` first records which predictor serves each version. Every action is appended to
the audit log (``--audit-log``, default ``<RELEARN_HOME>/rollout/audit.jsonl``).
Defaults come from the environment: RELEARN_ROLLOUT_NAMESPACE, RELEARN_ROLLOUT_INFERENCE_SERVICE,
RELEARN_ROLLOUT_VIRTUAL_SERVICE, RELEARN_ROLLOUT_SHADOW_SERVICE, RELEARN_ROLLOUT_BACKEND,
RELEARN_ROLLOUT_STATE, RELEARN_ROLLOUT_AUDIT_LOG.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from relearn.rollout.audit import audit_log_for
from relearn.rollout.backend import RolloutBackend, RolloutError
from relearn.rollout.backends import make_backend


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"RELEARN_ROLLOUT_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (status, register, canary, shadow, promote, rollback, history, experiment)."""
    parser = argparse.ArgumentParser(
        prog="kubectl relearn",
        description="Canary and shadow rollouts of relearn models (KServe + Istio, or the local router).",
    )
    parser.add_argument(
        "--backend",
        choices=["kubernetes", "local"],
        default=_env("BACKEND", "kubernetes"),
        help="where to act",
    )
    parser.add_argument(
        "-n", "--namespace", default=_env("NAMESPACE", "default"), help="Kubernetes namespace"
    )
    parser.add_argument(
        "--inference-service",
        default=_env("INFERENCE_SERVICE", "relearn-fraud"),
        help="fraud InferenceService",
    )
    parser.add_argument("--virtual-service", default=_env("VIRTUAL_SERVICE"), help="mirroring VirtualService")
    parser.add_argument("--shadow-service", default=_env("SHADOW_SERVICE"), help="shadow InferenceService")
    parser.add_argument("--model-name", default=_env("MODEL_NAME", "relearn-fraud"), help="registered model")
    parser.add_argument(
        "--state", type=Path, default=_env("STATE"), help="local router state file (--backend local)"
    )
    parser.add_argument("--audit-log", type=Path, default=_env("AUDIT_LOG"), help="audit JSONL file")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="stable/canary/shadow versions, traffic split, last decisions")
    register = sub.add_parser(
        "register",
        help="--backend local: where VERSION is served (the first registered version becomes stable)",
    )
    register.add_argument("version", help="the MLflow model version, e.g. 7")
    register.add_argument("--rest", help="REST base URL of its predictor, e.g. http://127.0.0.1:8082")
    register.add_argument("--grpc", help="gRPC target of its predictor, e.g. 127.0.0.1:8083")
    register.add_argument("--reason", default="")
    for kind, help_ in (
        ("canary", "route a share of traffic to VERSION"),
        ("shadow", "mirror traffic to VERSION"),
    ):
        group = sub.add_parser(kind, help=f"{kind} rollouts").add_subparsers(dest="action", required=True)
        start = group.add_parser("start", help=help_)
        start.add_argument("version")
        start.add_argument("--percent", type=float if kind == "shadow" else int, required=True)
        start.add_argument("--reason", default="")
        if kind == "canary":
            step = group.add_parser("set", help="change the canary's share")
            step.add_argument("--percent", type=int, required=True)
            step.add_argument("--reason", default="")
        else:
            stop = group.add_parser("stop", help="stop mirroring")
            stop.add_argument("--reason", default="")
    for name, help_ in (("promote", "make the canary stable"), ("rollback", "all traffic back to stable")):
        sub.add_parser(name, help=help_).add_argument("--reason", default="")
    history = sub.add_parser("history", help="the audit trail")
    history.add_argument("--limit", type=int, default=20)
    from relearn.experiments.cli import add_commands

    experiment = sub.add_parser(
        "experiment",
        help="A/B experiments and bandits between model versions: "
        "start|status|stop|list|analyze|update-bandit|promote|simulate",
        description="The commands of `python -m relearn.experiments` on the same store; their own --store "
        "and --audit-log (default <RELEARN_HOME>/experiments/), not the rollout's.",
    )
    add_commands(experiment, dest="action")
    return parser


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=1) if args.output == "json" else text)


def _register(backend: Any, args: argparse.Namespace) -> Any:
    """Record a version's endpoints with the local router (in a cluster, KServe serves each version)."""
    if not (args.rest or args.grpc):
        raise RolloutError("give --rest URL and/or --grpc HOST:PORT of the predictor serving the version")
    backend.register(args.version, rest=args.rest, grpc=args.grpc)
    return backend.state()


def _refuse_during_experiment(backend: Any) -> None:
    """One test in production at a time: no canary or shadow (it becomes a canary) during an experiment."""
    from relearn.experiments.exclusion import running_experiment

    busy = running_experiment(backend)
    if busy:
        raise RolloutError(f"refused: {busy}")


def run(args: argparse.Namespace, backend: RolloutBackend | None = None) -> int:
    """Execute one parsed command; returns the exit status."""
    if args.command == "experiment":
        from relearn.experiments.cli import execute

        return execute(args, args.action)
    audit = audit_log_for(args.audit_log)
    if args.command == "history":
        entries = audit.entries(args.limit)
        lines = [f"{e['time']}  {e['action']:<14} {e.get('version') or '':<8} {e['reason']}" for e in entries]
        _print(args, entries, "\n".join(lines) or "no rollout actions recorded")
        return 0
    if args.command == "register" and args.backend != "local":
        print("error: register is for --backend local (KServe serves versions in a cluster)", file=sys.stderr)
        return 1
    backend = backend or make_backend(args)
    actor = f"kubectl-relearn/{getpass.getuser()}"
    try:
        if args.command == "status":
            state = backend.state()
            last = audit.entries(5)
            text = (
                f"stable: {state.stable}\ncanary: {state.canary or '-'} ({state.canary_percent}%)\n"
                f"shadow: {state.shadow or '-'} (mirror {state.mirror_percent:g}%)"
            )
            if last:
                text += "\nlast decisions:\n" + "\n".join(
                    f"  {e['time']} {e['action']} {e['reason']}" for e in last
                )
            _print(args, {"state": state.to_dict(), "last_decisions": last}, text)
            return 0
        if args.command in ("canary", "shadow") and args.action == "start":
            _refuse_during_experiment(backend)
        if args.command == "register":
            state, action = _register(backend, args), "register"
        elif args.command == "canary" and args.action == "start":
            state, action = backend.start_canary(args.version, args.percent), "canary-start"
        elif args.command == "canary":
            state, action = backend.set_canary_percent(args.percent), "canary-step"
        elif args.command == "shadow" and args.action == "start":
            state, action = backend.start_shadow(args.version, args.percent), "shadow-start"
        elif args.command == "shadow":
            state, action = backend.stop_shadow(), "shadow-stop"
        elif args.command == "promote":
            version = backend.state().canary
            state, action = backend.promote(), "promote"
            args.version = version
        else:
            version = backend.state().canary
            state, action = backend.rollback(), "rollback"
            args.version = version
    except (RolloutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    entry = audit.append(
        action,
        actor=actor,
        reason=args.reason,
        version=getattr(args, "version", None),
        percent=getattr(args, "percent", None),
        backend=args.backend,
        state=state.to_dict(),
    )
    _print(
        args,
        entry,
        f"{action}: stable={state.stable} canary={state.canary or '-'} ({state.canary_percent}%) "
        f"shadow={state.shadow or '-'} ({state.mirror_percent:g}%)",
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console script ``kubectl-relearn``."""
    args = build_parser().parse_args(argv)
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
