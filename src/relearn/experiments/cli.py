r"""``python -m relearn.experiments start|status|stop|list``: A/B experiments on the local store.

    python -m relearn.experiments start ab1 --arm v7=50 --arm v8=50 --control v7 --cards-per-day 1e5 \
        --base-loss 0.75 --loss-sd 16
    python -m relearn.experiments status ab1
    python -m relearn.experiments stop ab1 --reason "p99 too high"
    python -m relearn.experiments list
    python -m relearn.experiments analyze ab1 --predictions joined.parquet --report-dir report/ab1
    python -m relearn.experiments promote ab1   # the winner as the canary, through the rollout path
    python -m relearn.experiments start b1 --mode bandit --arm v7 --arm v8 --arm v9 --control v7
    python -m relearn.experiments update-bandit b1 --history joined.parquet   # periodically: new shares
    python -m relearn.experiments update-bandit --detector http://drift:8080  # every bandit (CronJob)
    python -m relearn.experiments simulate      # the README's figures: false positives, power, regret

``start`` prints the plan (minimum detectable effect, days to find the planned effect) from the traffic
and the base loss per card. Every change is appended to the audit trail. Defaults come from the
environment: RELEARN_HOME (the store under <home>/experiments/) and RELEARN_EXPERIMENT_* (alpha, power,
planned effect, maximum days; CONFIGMAP and ROUTER for the cluster's store and experiment router).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from relearn.experiments.sequential import plan
from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore, default_store
from relearn.experiments.versions import arm_tags, check_versions, stop_tags, tag_arms
from relearn.settings import RelearnSettings


def _arm(text: str) -> tuple[str, int | None]:
    name, sep, percent = text.partition("=")
    if not name or (sep and not percent.isdigit()):
        raise argparse.ArgumentTypeError(f"expected VERSION=PERCENT (VERSION for a bandit), got {text!r}")
    return name, int(percent) if sep else None


def parser() -> argparse.ArgumentParser:
    """The command line (``--help`` on every subcommand)."""
    first, _, rest = (__doc__ or "").partition("\n")
    p = argparse.ArgumentParser(
        prog="python -m relearn.experiments",
        description=first,
        epilog=rest,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(p, dest="command")
    return p


def add_commands(p: argparse.ArgumentParser, dest: str) -> None:
    """Options and subcommands (named in ``dest``), also under ``kubectl relearn experiment``."""
    p.add_argument(
        "--store", type=Path, default=None, help="Experiment store (default <RELEARN_HOME>/experiments/)."
    )
    p.add_argument("--audit-log", type=Path, default=None, help="Audit trail (default beside the store).")
    p.add_argument(
        "--configmap",
        default=None,
        help="NAMESPACE/NAME: keep the store in this ConfigMap, the one the cluster's transformers mount "
        "(default RELEARN_EXPERIMENT_CONFIGMAP; unset: the local store).",
    )
    p.add_argument(
        "--router",
        default=None,
        help="With --configmap: the experiment router VirtualService; start refuses arms it cannot route "
        "(default RELEARN_EXPERIMENT_ROUTER).",
    )
    p.add_argument(
        "--no-registry",
        action="store_true",
        help="Neither check the arms' versions in the MLflow registry at start nor tag them with the result "
        "(offline planning only).",
    )
    sub = p.add_subparsers(dest=dest, required=True)
    start = sub.add_parser("start", help="Start an experiment (prints its plan).")
    start.add_argument("name")
    start.add_argument(
        "--arm",
        type=_arm,
        action="append",
        required=True,
        help="VERSION=PERCENT, 2+ times; with --mode bandit VERSION (equal start) 3+ times.",
    )
    start.add_argument(
        "--mode",
        choices=("ab", "bandit"),
        default="ab",
        help="ab: a fixed split and the sequential test; bandit: Thompson sampling between 3+ versions on "
        "the delayed reward (shares set by update-bandit).",
    )
    start.add_argument(
        "--control", required=True, help="The arm the others are compared with (the champion)."
    )
    start.add_argument("--traffic", default="fraud", help="Traffic the experiment covers (one at a time).")
    start.add_argument(
        "--history",
        type=Path,
        help="Recent joined predictions of the champion (.parquet/.csv): measure the plan's traffic, "
        "base loss and sd, and refuse when no labels flow.",
    )
    start.add_argument("--cards-per-day", type=float, help="Cards per day over all arms (for the plan).")
    start.add_argument("--base-loss", type=float, help="Base loss per card (for the plan).")
    start.add_argument(
        "--loss-sd", type=float, help="Standard deviation of the loss per card (for the plan)."
    )
    status = sub.add_parser("status", help="One experiment as JSON.")
    status.add_argument("name")
    stop = sub.add_parser("stop", help="Stop a running experiment.")
    stop.add_argument("name")
    stop.add_argument("--reason", required=True)
    sub.add_parser("list", help="All experiments, one line each.")
    ana = sub.add_parser(
        "analyze", help="Test a running experiment on its joined predictions; stop it when decided."
    )
    ana.add_argument("name")
    ana.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="Predictions joined with chargebacks (.parquet or .csv): arm, user_id, score, label, amount, "
        "time (epoch s).",
    )
    ana.add_argument("--report-dir", type=Path, required=True, help="Where result.json and the plots go.")
    ana.add_argument(
        "--health", type=Path, help="JSON list of arm health (arm, requests, errors, p99_seconds, ...)."
    )
    bandit = sub.add_parser(
        "update-bandit", help="Recompute a bandit's arm shares from the delayed rewards; write them."
    )
    bandit.add_argument("name", nargs="?", help="The bandit (default: every running bandit).")
    source = bandit.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--history", type=Path, help="Predictions joined with chargebacks (.parquet or .csv), as for analyze."
    )
    source.add_argument(
        "--detector",
        help="The drift detector's URL: read the joined history from its GET /v1/experiments/rewards "
        "(the cluster's source; the chart's CronJob passes it).",
    )
    bandit.add_argument("--now", type=float, help="Epoch seconds of the update (default: the clock).")
    bandit.add_argument("--seed", type=int, default=0, help="Seed of the posterior draws.")
    promote = sub.add_parser(
        "promote", help="Start the stopped experiment's winner as the canary (the rollout path)."
    )
    promote.add_argument("name")
    promote.add_argument("--percent", type=int, help="The canary's first share (default: the schedule's).")
    sim = sub.add_parser(
        "simulate", help="Validity, power and bandit regret over simulated experiments (JSON)."
    )
    sim.add_argument("--experiments", type=int, default=1000, help="Simulated experiments per figure.")
    sim.add_argument("--seed", type=int, default=0)


def _read(path: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _start_split(args: argparse.Namespace, settings: ExperimentSettings) -> tuple[dict[str, int], Any]:
    """The starting split and, with --mode bandit, the bandit's parameters (refuses k < 3)."""
    names = [a for a, _ in args.arm]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names repeat: {names}")
    if args.mode == "bandit":
        from relearn.experiments.bandit_live import bandit_params, equal_percents

        bandit = bandit_params(len(names), settings)
        if all(p is None for _, p in args.arm):
            return equal_percents(names), bandit
    else:
        bandit = None
    if any(p is None for _, p in args.arm):
        raise ValueError(f"give every arm its percent (VERSION=PERCENT), got {names}")
    return dict(args.arm), bandit


def _from_history(args: argparse.Namespace, settings: ExperimentSettings) -> None:
    """Fill the plan's inputs not given on the command line from the history; refuse without labels."""
    from relearn.experiments.analysis import baseline

    measured = baseline(_read(args.history), settings)
    if measured["frauds"] == 0 or not measured["base_loss"] or not measured["loss_sd"]:
        raise ValueError(
            f"no labels flowing in {args.history} ({measured['frauds']} frauds, {measured['cards']} complete "
            "cards): the test would never see a chargeback"
        )
    args.cards_per_day = args.cards_per_day or measured["cards_per_day"]
    args.base_loss = args.base_loss or measured["base_loss"]
    args.loss_sd = args.loss_sd or measured["loss_sd"]


def _analyze(
    args: argparse.Namespace, store: ExperimentStore, audit: Any, settings: ExperimentSettings
) -> int:
    """Run the test on the joined predictions, write the report, record and (when decided) stop."""
    from relearn.experiments.analysis import analyze_all
    from relearn.experiments.guardrails import ArmHealth, check
    from relearn.experiments.result import Decision, plot_effect

    record = store.get(args.name)
    if record["status"] != "running":
        raise ValueError(f"experiment {args.name!r} is not running ({record['status']})")
    if record.get("kind") == "bandit":
        raise ValueError(f"experiment {args.name!r} is a bandit (cards move with its shares): update-bandit")
    if not record.get("plan"):
        raise ValueError(
            f"experiment {args.name!r} has no plan (start it with --cards-per-day ...): tau is unset"
        )
    frame = _read(args.predictions)
    settling = frame["time"].between(record["started"], record["started"] + settings.refresh_grace_seconds)
    frame = frame[~settling]  # replicas may still route by the old store: no arm to credit
    unknown = sorted(set(frame["arm"].astype(str)) - set(record["split"]))
    if unknown:
        raise ValueError(f"predictions name arms outside the experiment: {unknown}")
    health = [ArmHealth(**h) for h in json.loads(args.health.read_text())] if args.health else []
    guard = check(health, settings) if health else None
    results = analyze_all(
        args.name, frame, record["control"], tau=record["plan"]["tau"], settings=settings, guardrails=guard
    )
    args.report_dir.mkdir(parents=True, exist_ok=True)
    out = {arm: r.as_dict() for arm, (r, _, _) in results.items()}
    for arm, (r, days, looks) in results.items():
        if looks:
            plot_effect(
                looks, days, args.report_dir / f"effect-{arm}.png", f"{args.name}: {arm} vs {r.control}"
            )
    (args.report_dir / "result.json").write_text(json.dumps(out, indent=2))
    audit.append("experiment-result", actor=getpass.getuser(), experiment=args.name, results=out)
    decided = [r for r, _, _ in results.values() if r.decision != Decision.RUNNING]
    if decided and (len(decided) == len(results) or any(r.decision == Decision.STOPPED for r in decided)):
        reason = "; ".join(f"{r.treatment}: {r.reason}" for r in decided)
        store.stop(args.name, reason, result=out)
        audit.append("experiment-stop", actor=getpass.getuser(), experiment=args.name, reason=reason)
    print(json.dumps(out, indent=2))
    return _tag(args, arm_tags({arm: r for arm, (r, _, _) in results.items()}))


def _tag(args: argparse.Namespace, tags: dict[str, dict[str, str]]) -> int:
    """Tag each arm's model version; a registry failure exits 1 after the store changed (it is recorded)."""
    from mlflow.exceptions import MlflowException

    if args.no_registry:
        return 0
    try:
        tag_arms(RelearnSettings(), tags)
    except MlflowException as err:
        print(f"recorded, but the model versions were not tagged: {err}", file=sys.stderr)
        return 1
    return 0


def _update_bandit(args: argparse.Namespace, store: ExperimentStore, audit: Any, settings: Any) -> int:
    """New arm shares from the matured rewards, written to the store (transformers follow).

    Without a name every running bandit is updated (the CronJob's call); none running is not an error.
    """
    import time

    from relearn.experiments.bandit_live import update_bandits

    now = args.now if args.now is not None else time.time()
    history = _read(args.history) if args.history else None
    out = []
    for record in update_bandits(store, args.name, history, args.detector, now, settings, args.seed):
        b = record["bandit"]
        audit.append(
            "experiment-bandit-update",
            actor=getpass.getuser(),
            experiment=record["name"],
            shares=record["shares"],
            fallback=b["fallback"],
        )
        counts = {k: b[k] for k in ("caught", "missed", "fallback", "reward_age_s")}
        out.append({"experiment": record["name"], "shares": record["shares"], **counts})
    print(json.dumps(out[0] if args.name else out, indent=2))
    return 0


def _promote(args: argparse.Namespace, store: ExperimentStore, audit: Any) -> int:
    """The winner as the canary through relearn.rollout.deploy (``kubectl relearn``'s backend options)."""
    from relearn.experiments.promote import promote
    from relearn.rollout.backend import RolloutError
    from relearn.rollout.controller import ControllerSettings

    record = store.get(args.name)
    # Under kubectl relearn the plugin's own options choose the backend; alone, RELEARN_ROLLOUT_*.
    options = ("backend", "namespace", "inference_service", "virtual_service", "shadow_service", "state")
    rollout = ControllerSettings(**{k: getattr(args, k) for k in options if getattr(args, k, None)})
    try:
        result = promote(record, settings=rollout, percent=args.percent, registry=not args.no_registry)
    except RolloutError as err:
        raise ValueError(f"the rollout refused: {err}") from None
    audit.append(
        "experiment-promote",
        actor=getpass.getuser(),
        experiment=args.name,
        version=result.version,
        reason=result.reason,
    )
    print(json.dumps({"experiment": args.name, "version": result.version, "rollout": result.reason}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input exits 2 with the reason and changes nothing."""
    args = parser().parse_args(argv)
    return execute(args, args.command)


def execute(args: argparse.Namespace, command: str) -> int:
    """Run ``command`` with the options of :func:`add_commands`; bad input exits 2, nothing changed."""
    from relearn.rollout.audit import AuditLog

    settings = ExperimentSettings()
    configmap = args.configmap or settings.configmap
    store: ExperimentStore
    if configmap:
        from relearn.experiments.kube_store import ConfigMapStore

        store = ConfigMapStore(configmap, local_dir=(args.store or default_store()).parent)
    else:
        store = ExperimentStore(args.store or default_store())
    audit = AuditLog(args.audit_log or store.path.parent / "audit.jsonl")
    try:
        if command == "start":
            split, bandit = _start_split(args, settings)
            the_plan: dict[str, Any] | None = None
            if args.history:
                _from_history(args, settings)
            planned = args.cards_per_day and args.base_loss and args.loss_sd and args.control in split
            if bandit is None and planned:
                # Sized for the slowest comparison: the control against the smallest other arm.
                pair = split[args.control] + min(v for a, v in split.items() if a != args.control)
                p = plan(
                    args.cards_per_day * pair / 100,
                    args.base_loss,
                    args.loss_sd,
                    alpha=settings.alpha,
                    power=settings.power,
                    relative_effect=settings.relative_effect,
                    control_share=split[args.control] / pair,
                    max_days=settings.max_days,
                    lag_days=settings.unit_window_days + settings.label_maturity_days,
                )
                the_plan = p.as_dict()
                print(p.describe())
            if not args.no_registry:
                check_versions(RelearnSettings(), split)
            router = args.router or settings.router
            if configmap and router:
                from relearn.experiments.kube_store import check_routes

                check_routes(store.api_client, store.namespace, router, split)  # type: ignore[attr-defined]
            from relearn.experiments.exclusion import refuse_during_canary

            opts = {k: getattr(args, k, None) for k in ("inference_service", "state")}
            refuse_during_canary(store, cluster=bool(configmap), **opts)
            record = store.start(
                args.name, split, control=args.control, traffic=args.traffic, plan=the_plan, bandit=bandit
            )
            audit.append(
                "experiment-start", actor=getpass.getuser(), experiment=args.name, split=record["split"]
            )
            print(json.dumps(record, indent=2))
        elif command == "simulate":
            from relearn.experiments.simulate import figures

            print(json.dumps(figures(sims=args.experiments, alpha=settings.alpha, seed=args.seed), indent=2))
        elif command == "analyze":
            return _analyze(args, store, audit, settings)
        elif command == "update-bandit":
            return _update_bandit(args, store, audit, settings)
        elif command == "promote":
            return _promote(args, store, audit)
        elif command == "status":
            print(json.dumps(store.get(args.name), indent=2))
        elif command == "stop":
            record = store.stop(args.name, args.reason)
            audit.append("experiment-stop", actor=getpass.getuser(), reason=args.reason, experiment=args.name)
            print(json.dumps(record, indent=2))
            return _tag(args, stop_tags(args.name, record["split"], record["control"], args.reason))
        else:
            for r in store.list():
                split = " ".join(f"{a}={p}" for a, p in r["split"].items())
                if r.get("shares"):  # a bandit: its current shares, not its starting split
                    split = "bandit " + " ".join(f"{a}={p:.3f}" for a, p in r["shares"].items())
                print(f"{r['name']}\t{r['status']}\t{r['traffic']}\t{split}")
    except (ValueError, KeyError) as err:
        print(f"refused: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0
