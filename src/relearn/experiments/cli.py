r"""``python -m relearn.experiments start|status|stop|list|...``: A/B experiments and bandits on the store.

``start`` prints the plan (minimum detectable effect, days to find the planned effect) from the traffic and
the base loss per card. Every change is appended to the audit trail. The same commands run as
``kubectl relearn experiment ...`` (:mod:`relearn.rollout.cli`), where the plugin's rollout options choose
the backend ``promote`` acts on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import CliPositionalArg, CliSubCommand, get_subcommand

from relearn import commands
from relearn.commands import ToolCommand, command_config
from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore, default_store
from relearn.experiments.subcommands import Analyze, Context, PromoteWinner, Start, UpdateBandit
from relearn.experiments.versions import stop_tags

PROG = "python -m relearn.experiments"
SUBCOMMANDS = ("start", "status", "stop", "list", "analyze", "update-bandit", "promote", "simulate")


class Status(BaseModel):
    """One experiment as JSON."""

    name: CliPositionalArg[str] = Field(description="The experiment's name.")

    def run(self, ctx: Context) -> int:
        """Print the record."""
        print(json.dumps(ctx.store.get(self.name), indent=2))
        return 0


class Stop(BaseModel):
    """Stop a running experiment and tag its arms' versions with the reason."""

    name: CliPositionalArg[str] = Field(description="The experiment's name.")
    reason: str = Field(description="Why it stops (the audit trail and the versions' tags keep it).")

    def run(self, ctx: Context) -> int:
        """Stop, record, print, tag."""
        record = ctx.store.stop(self.name, self.reason)
        ctx.record("experiment-stop", reason=self.reason, experiment=self.name)
        print(json.dumps(record, indent=2))
        return ctx.tag(stop_tags(self.name, record["split"], record["control"], self.reason))


class ListAll(BaseModel):
    """All experiments, one line each: name, status, traffic, split (a bandit: its current shares)."""

    def run(self, ctx: Context) -> int:
        """Print one tab-separated line per experiment."""
        for r in ctx.store.list():
            split = " ".join(f"{a}={p}" for a, p in r["split"].items())
            if r.get("shares"):  # a bandit: its current shares, not its starting split
                split = "bandit " + " ".join(f"{a}={p:.3f}" for a, p in r["shares"].items())
            print(f"{r['name']}\t{r['status']}\t{r['traffic']}\t{split}")
        return 0


class Simulate(BaseModel):
    """Validity, power and bandit regret over simulated experiments (JSON): the guide's figures."""

    experiments: int = Field(1000, ge=1, description="Simulated experiments per figure.")
    seed: int = Field(0, description="Seed of the simulations.")

    def run(self, ctx: Context) -> int:
        """Print the figures."""
        from relearn.experiments.simulate import figures

        print(json.dumps(figures(sims=self.experiments, alpha=ctx.settings.alpha, seed=self.seed), indent=2))
        return 0


class Experiments(BaseModel):
    """The commands of `python -m relearn.experiments` on the same store.

    Their own --store and --audit-log (default <RELEARN_HOME>/experiments/), not the rollout's.
    """

    store: Path | None = Field(None, description="Experiment store (default <RELEARN_HOME>/experiments/).")
    audit_log: Path | None = Field(None, description="Audit trail (default beside the store).")
    configmap: str | None = Field(
        None,
        description="NAMESPACE/NAME: keep the store in this ConfigMap, the one the cluster's transformers "
        "mount (default RELEARN_EXPERIMENT_CONFIGMAP; unset: the local store).",
    )
    router: str | None = Field(
        None,
        description="With --configmap: the experiment router VirtualService; start refuses arms it cannot "
        "route (default RELEARN_EXPERIMENT_ROUTER).",
    )
    registry: bool = Field(
        True,
        description="Check the arms' versions in the MLflow registry at start and tag them with the result "
        "(--no-registry: offline planning only).",
    )
    start: CliSubCommand[Start] = Field(description="Start an experiment (prints its plan).")
    status: CliSubCommand[Status] = Field(description="One experiment as JSON.")
    stop: CliSubCommand[Stop] = Field(description="Stop a running experiment.")
    list: CliSubCommand[ListAll] = Field(description="All experiments, one line each.")
    analyze: CliSubCommand[Analyze] = Field(
        description="Test a running experiment on its joined predictions; stop it when decided."
    )
    update_bandit: CliSubCommand[UpdateBandit] = Field(
        description="Recompute a bandit's arm shares from the delayed rewards; write them."
    )
    promote: CliSubCommand[PromoteWinner] = Field(
        description="Start the stopped experiment's winner as the canary (the rollout path)."
    )
    simulate: CliSubCommand[Simulate] = Field(
        description="Validity, power and bandit regret over simulated experiments (JSON)."
    )

    def execute(self, rollout: dict[str, Any] | None = None) -> int:
        """Run the chosen subcommand; a refusal exits 2 with the reason and changes nothing.

        ``rollout``: ``kubectl relearn``'s rollout options (backend, namespace, ...), None alone.
        """
        from relearn.rollout.audit import AuditLog

        sub = get_subcommand(self, is_required=False)
        if sub is None:  # a usage error, as argparse's: status 2
            print(f"error: give a command: {' | '.join(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        settings = ExperimentSettings()
        configmap = self.configmap or settings.configmap
        store: ExperimentStore
        if configmap:
            from relearn.experiments.kube_store import ConfigMapStore

            store = ConfigMapStore(configmap, local_dir=(self.store or default_store()).parent)
        else:
            store = ExperimentStore(self.store or default_store())
        audit = AuditLog(self.audit_log or store.path.parent / "audit.jsonl")
        router = self.router or settings.router
        ctx = Context(store, audit, settings, self.registry, bool(configmap), router, rollout)
        try:
            return sub.run(ctx)
        except (ValueError, KeyError) as err:
            print(f"refused: {err.args[0] if err.args else err}", file=sys.stderr)
            return 2


class ExperimentsCli(Experiments, ToolCommand):
    r"""A/B experiments and bandits between model versions (JSON logs on stderr).

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
    python -m relearn.experiments simulate      # the guide's figures: false positives, power, regret

    Defaults come from the environment: RELEARN_HOME (the store under <home>/experiments/) and
    RELEARN_EXPERIMENT_* (alpha, power, planned effect, maximum days; CONFIGMAP and ROUTER for the
    cluster's store and experiment router).
    """

    model_config = command_config(PROG, "RELEARN_EXPERIMENT_", cli_enforce_required=True)


def parse(argv: list[str]) -> ExperimentsCli:
    """``argv`` and the environment parsed, not run (the chart's test reads the CronJob's argv with it)."""
    return ExperimentsCli(_cli_parse_args=argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status: 0 done, 1 recorded but the versions not tagged, 2 refused.

    A bad option exits 2 naming it before anything ran.
    """
    return commands.run(ExperimentsCli, argv, "experiments command").exit_code
