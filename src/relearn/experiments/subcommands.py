"""The experiments' subcommands that plan, test and act: start, analyze, update-bandit, promote.

Each is a pydantic model whose fields are its flags (``python -m relearn.experiments <sub> --help``) and
whose ``run`` does the work on a :class:`Context` (the store, its audit trail, the settings); a ``ValueError``
or ``KeyError`` is a refusal (exit 2, nothing changed). The command line that holds them is
:mod:`relearn.experiments.cli`.
"""

from __future__ import annotations

import getpass
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import CliPositionalArg

from relearn.experiments.sequential import plan
from relearn.experiments.settings import ExperimentSettings
from relearn.experiments.store import ExperimentStore
from relearn.experiments.versions import arm_tags, check_versions, tag_arms
from relearn.settings import RelearnSettings


@dataclass
class Context:
    """What every subcommand works on; ``rollout`` is ``kubectl relearn``'s options (None alone)."""

    store: ExperimentStore
    audit: Any  # relearn.rollout.audit.AuditLog
    settings: ExperimentSettings
    registry: bool  # check and tag the arms' versions in the MLflow registry
    cluster: bool  # the store is the cluster's ConfigMap
    router: str | None
    rollout: dict[str, Any] | None = None  # the RolloutTarget options kubectl relearn was given

    def record(self, action: str, **fields: Any) -> None:
        """Append ``action`` to the experiments' audit trail under the user's name."""
        self.audit.append(action, actor=getpass.getuser(), **fields)

    def tag(self, tags: dict[str, dict[str, str]]) -> int:
        """Tag each arm's model version; a registry failure exits 1 after the store changed (recorded)."""
        from mlflow.exceptions import MlflowException

        if not self.registry:
            return 0
        try:
            tag_arms(RelearnSettings(), tags)
        except MlflowException as err:
            print(f"recorded, but the model versions were not tagged: {err}", file=sys.stderr)
            return 1
        return 0


def read_frame(path: Path) -> Any:
    """A joined-predictions file, .parquet or .csv."""
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _arm(text: str) -> tuple[str, int | None]:
    name, sep, percent = text.partition("=")
    if not name or (sep and not percent.isdigit()):
        raise ValueError(f"expected VERSION=PERCENT (VERSION for a bandit), got {text!r}")
    return name, int(percent) if sep else None


class Start(BaseModel):
    """Start an experiment: print its plan, check the arms' versions and routes, record it."""

    name: CliPositionalArg[str] = Field(description="The experiment's name.")
    arm: list[str] = Field(
        description="VERSION=PERCENT, 2+ times; with --mode bandit VERSION (equal start) 3+ times."
    )
    mode: Literal["ab", "bandit"] = Field(
        "ab",
        description="ab: a fixed split and the sequential test; bandit: Thompson sampling between 3+ "
        "versions on the delayed reward (shares set by update-bandit).",
    )
    control: str = Field(description="The arm the others are compared with (the champion).")
    traffic: str = Field("fraud", description="Traffic the experiment covers (one at a time).")
    history: Path | None = Field(
        None,
        description="Recent joined predictions of the champion (.parquet/.csv): measure the plan's traffic, "
        "base loss and sd, and refuse when no labels flow.",
    )
    cards_per_day: float | None = Field(None, description="Cards per day over all arms (for the plan).")
    base_loss: float | None = Field(None, description="Base loss per card (for the plan).")
    loss_sd: float | None = Field(None, description="Standard deviation of the loss per card (for the plan).")

    @field_validator("arm")
    @classmethod
    def _arms_parse(cls, arms: list[str]) -> list[str]:
        for text in arms:
            _arm(text)
        return arms

    def split(self, settings: ExperimentSettings) -> tuple[dict[str, int], Any]:
        """The starting split and, with --mode bandit, the bandit's parameters (refuses k < 3)."""
        arms = [_arm(text) for text in self.arm]
        names = [a for a, _ in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        bandit = None
        if self.mode == "bandit":
            from relearn.experiments.bandit_live import bandit_params, equal_percents

            bandit = bandit_params(len(names), settings)
            if all(p is None for _, p in arms):
                return equal_percents(names), bandit
        if any(p is None for _, p in arms):
            raise ValueError(f"give every arm its percent (VERSION=PERCENT), got {names}")
        return {a: p for a, p in arms if p is not None}, bandit

    def _from_history(self, history: Path, settings: ExperimentSettings) -> None:
        """Fill the plan's inputs not given on the command line from the history; refuse without labels."""
        from relearn.experiments.analysis import baseline

        measured = baseline(read_frame(history), settings)
        if measured["frauds"] == 0 or not measured["base_loss"] or not measured["loss_sd"]:
            raise ValueError(
                f"no labels flowing in {history} ({measured['frauds']} frauds, {measured['cards']} complete "
                "cards): the test would never see a chargeback"
            )
        self.cards_per_day = self.cards_per_day or measured["cards_per_day"]
        self.base_loss = self.base_loss or measured["base_loss"]
        self.loss_sd = self.loss_sd or measured["loss_sd"]

    def run(self, ctx: Context) -> int:
        """Plan (ab with the plan's inputs), check, refuse during a canary, then record the start."""
        settings = ctx.settings
        split, bandit = self.split(settings)
        the_plan: dict[str, Any] | None = None
        if self.history:
            self._from_history(self.history, settings)
        if (
            bandit is None
            and self.cards_per_day
            and self.base_loss
            and self.loss_sd
            and self.control in split
        ):
            # Sized for the slowest comparison: the control against the smallest other arm.
            pair = split[self.control] + min(v for a, v in split.items() if a != self.control)
            p = plan(
                self.cards_per_day * pair / 100,
                self.base_loss,
                self.loss_sd,
                alpha=settings.alpha,
                power=settings.power,
                relative_effect=settings.relative_effect,
                control_share=split[self.control] / pair,
                max_days=settings.max_days,
                lag_days=settings.unit_window_days + settings.label_maturity_days,
            )
            the_plan = p.as_dict()
            print(p.describe())
        if ctx.registry:
            check_versions(RelearnSettings(), split)
        if ctx.cluster and ctx.router:
            from relearn.experiments.kube_store import check_routes

            check_routes(ctx.store.api_client, ctx.store.namespace, ctx.router, split)  # type: ignore[attr-defined]
        from relearn.experiments.exclusion import refuse_during_canary

        target = {k: (ctx.rollout or {}).get(k) for k in ("inference_service", "state")}
        refuse_during_canary(ctx.store, cluster=ctx.cluster, **target)
        record = ctx.store.start(
            self.name, split, control=self.control, traffic=self.traffic, plan=the_plan, bandit=bandit
        )
        ctx.record("experiment-start", experiment=self.name, split=record["split"])
        print(json.dumps(record, indent=2))
        return 0


class Analyze(BaseModel):
    """Test a running experiment on its joined predictions; stop it when decided."""

    name: CliPositionalArg[str] = Field(description="The experiment's name.")
    predictions: Path = Field(
        description="Predictions joined with chargebacks (.parquet or .csv): arm, user_id, score, label, "
        "amount, time (epoch s)."
    )
    report_dir: Path = Field(description="Where result.json and the plots go.")
    health: Path | None = Field(
        None, description="JSON list of arm health (arm, requests, errors, p99_seconds, ...)."
    )

    def run(self, ctx: Context) -> int:
        """Run the test, write the report, record and (when decided) stop; then tag the arms' versions."""
        from relearn.experiments.analysis import analyze_all
        from relearn.experiments.guardrails import ArmHealth, check
        from relearn.experiments.result import Decision, plot_effect

        record, settings = ctx.store.get(self.name), ctx.settings
        if record["status"] != "running":
            raise ValueError(f"experiment {self.name!r} is not running ({record['status']})")
        if record.get("kind") == "bandit":
            raise ValueError(
                f"experiment {self.name!r} is a bandit (cards move with its shares): update-bandit"
            )
        if not record.get("plan"):
            raise ValueError(
                f"experiment {self.name!r} has no plan (start it with --cards-per-day ...): tau is unset"
            )
        frame = read_frame(self.predictions)
        grace = settings.refresh_grace_seconds
        frame = frame[~frame["time"].between(record["started"], record["started"] + grace)]
        # (rows right after the start: replicas may still route by the old store, no arm to credit)
        unknown = sorted(set(frame["arm"].astype(str)) - set(record["split"]))
        if unknown:
            raise ValueError(f"predictions name arms outside the experiment: {unknown}")
        health = [ArmHealth(**h) for h in json.loads(self.health.read_text())] if self.health else []
        guard = check(health, settings) if health else None
        results = analyze_all(
            self.name,
            frame,
            record["control"],
            tau=record["plan"]["tau"],
            settings=settings,
            guardrails=guard,
        )
        self.report_dir.mkdir(parents=True, exist_ok=True)
        out = {arm: r.as_dict() for arm, (r, _, _) in results.items()}
        for arm, (r, days, looks) in results.items():
            if looks:
                title = f"{self.name}: {arm} vs {r.control}"
                plot_effect(looks, days, self.report_dir / f"effect-{arm}.png", title)
        (self.report_dir / "result.json").write_text(json.dumps(out, indent=2))
        ctx.record("experiment-result", experiment=self.name, results=out)
        decided = [r for r, _, _ in results.values() if r.decision != Decision.RUNNING]
        if decided and (len(decided) == len(results) or any(r.decision == Decision.STOPPED for r in decided)):
            reason = "; ".join(f"{r.treatment}: {r.reason}" for r in decided)
            ctx.store.stop(self.name, reason, result=out)
            ctx.record("experiment-stop", experiment=self.name, reason=reason)
        print(json.dumps(out, indent=2))
        return ctx.tag(arm_tags({arm: r for arm, (r, _, _) in results.items()}))


class UpdateBandit(BaseModel):
    """Recompute a bandit's arm shares from the delayed rewards; write them."""

    name: CliPositionalArg[str | None] = Field(
        None, description="The bandit (default: every running bandit)."
    )
    history: Path | None = Field(
        None, description="Predictions joined with chargebacks (.parquet or .csv), as for analyze."
    )
    detector: str | None = Field(
        None,
        description="The drift detector's URL: read the joined history from its GET /v1/experiments/rewards "
        "(the cluster's source; the chart's CronJob passes it). Give it or --history, not both.",
    )
    now: float | None = Field(None, description="Epoch seconds of the update (default: the clock).")
    seed: int = Field(0, description="Seed of the posterior draws.")

    @model_validator(mode="after")
    def _one_source(self) -> UpdateBandit:
        if (self.history is None) == (self.detector is None):
            raise ValueError("give one source of rewards: --history FILE or --detector URL")
        return self

    def run(self, ctx: Context) -> int:
        """New shares from the matured rewards, into the store (transformers follow).

        Without a name every running bandit is updated (the CronJob's call); none running is not an error.
        """
        import time

        from relearn.experiments.bandit_live import update_bandits

        now = self.now if self.now is not None else time.time()
        history = read_frame(self.history) if self.history else None
        out = []
        for record in update_bandits(
            ctx.store, self.name, history, self.detector, now, ctx.settings, self.seed
        ):
            b = record["bandit"]
            ctx.record(
                "experiment-bandit-update",
                experiment=record["name"],
                shares=record["shares"],
                fallback=b["fallback"],
            )
            counts = {k: b[k] for k in ("caught", "missed", "fallback", "reward_age_s")}
            out.append({"experiment": record["name"], "shares": record["shares"], **counts})
        print(json.dumps(out[0] if self.name else out, indent=2))
        return 0


class PromoteWinner(BaseModel):
    """Start the stopped experiment's winner as the canary (the rollout path)."""

    name: CliPositionalArg[str] = Field(description="The experiment's name.")
    percent: int | None = Field(None, description="The canary's first share (default: the schedule's).")

    def run(self, ctx: Context) -> int:
        """The winner as the canary through relearn.rollout.deploy (``kubectl relearn``'s backend options)."""
        from relearn.experiments.promote import promote
        from relearn.rollout.backend import RolloutError
        from relearn.rollout.controller import ControllerSettings

        record = ctx.store.get(self.name)
        # Under kubectl relearn the plugin's own options choose the backend; alone, RELEARN_ROLLOUT_*.
        given = {k: v for k, v in (ctx.rollout or {}).items() if v is not None}
        rollout = ControllerSettings(**given)
        try:
            result = promote(record, settings=rollout, percent=self.percent, registry=ctx.registry)
        except RolloutError as err:
            raise ValueError(f"the rollout refused: {err}") from None
        ctx.record("experiment-promote", experiment=self.name, version=result.version, reason=result.reason)
        print(json.dumps({"experiment": self.name, "version": result.version, "rollout": result.reason}))
        return 0
