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
the audit log (``--audit-log``, default ``<RELEARN_HOME>/rollout/audit.jsonl``). The shared options are
:class:`relearn.rollout.backends.RolloutTarget`'s, so their defaults come from RELEARN_ROLLOUT_<OPTION>.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field
from pydantic_settings import CliPositionalArg, CliSubCommand, get_subcommand

from relearn import commands
from relearn.commands import ToolCommand, command_config
from relearn.experiments.cli import Experiments
from relearn.rollout.audit import audit_log_for
from relearn.rollout.backend import RolloutBackend, RolloutError, RolloutState
from relearn.rollout.backends import RolloutTarget, make_backend

VERSION = "The MLflow model version, e.g. 7."
REASON = "Why (kept in the audit log)."


def _refuse_during_experiment(backend: RolloutBackend) -> None:
    """One test in production at a time: no canary or shadow (it becomes a canary) during an experiment."""
    from relearn.experiments.exclusion import running_experiment

    busy = running_experiment(backend)
    if busy:
        raise RolloutError(f"refused: {busy}")


class Action(BaseModel):
    """A rollout action: ``act`` changes the backend; the plugin records it in the audit log."""

    name: ClassVar[str]
    reason: str = Field("", description=REASON)

    def act(self, backend: RolloutBackend) -> tuple[RolloutState, str | None]:
        """Change the rollout; returns the new state and the version acted on."""
        raise NotImplementedError


class Register(Action):
    """--backend local: where VERSION is served (the first registered version becomes stable)."""

    name = "register"
    version: CliPositionalArg[str] = Field(description=VERSION)
    rest: str | None = Field(None, description="REST base URL of its predictor, e.g. http://127.0.0.1:8082")
    grpc: str | None = Field(None, description="gRPC target of its predictor, e.g. 127.0.0.1:8083")

    def act(self, backend: Any) -> tuple[RolloutState, str | None]:
        """Record the version's endpoints with the local router (in a cluster, KServe serves each version)."""
        if not (self.rest or self.grpc):
            raise RolloutError("give --rest URL and/or --grpc HOST:PORT of the predictor serving the version")
        backend.register(self.version, rest=self.rest, grpc=self.grpc)
        return backend.state(), self.version


class Start(Action):
    """Start a canary or a shadow of VERSION, refused while an experiment runs over the traffic."""

    version: CliPositionalArg[str] = Field(description=VERSION)

    def act(self, backend: RolloutBackend) -> tuple[RolloutState, str | None]:
        """Refuse during an experiment, else start."""
        _refuse_during_experiment(backend)
        return self.start(backend), self.version

    def start(self, backend: RolloutBackend) -> RolloutState:
        """Start the canary or the shadow."""
        raise NotImplementedError


class CanaryStart(Start):
    """Route a share of traffic to VERSION."""

    name = "canary-start"
    percent: int = Field(description="The canary's share of the traffic.")

    def start(self, backend: RolloutBackend) -> RolloutState:
        """Start the canary."""
        return backend.start_canary(self.version, self.percent)


class CanarySet(Action):
    """Change the canary's share."""

    name = "canary-step"
    percent: int = Field(description="The canary's new share of the traffic.")

    def act(self, backend: RolloutBackend) -> tuple[RolloutState, str | None]:
        """Set the share."""
        return backend.set_canary_percent(self.percent), None


class ShadowStart(Start):
    """Mirror traffic to VERSION."""

    name = "shadow-start"
    percent: float = Field(description="Share of the traffic mirrored to the shadow.")

    def start(self, backend: RolloutBackend) -> RolloutState:
        """Start mirroring."""
        return backend.start_shadow(self.version, self.percent)


class ShadowStop(Action):
    """Stop mirroring."""

    name = "shadow-stop"

    def act(self, backend: RolloutBackend) -> tuple[RolloutState, str | None]:
        """Stop the mirror."""
        return backend.stop_shadow(), None


class Promote(Action):
    """Make the canary stable."""

    name = "promote"

    def act(self, backend: RolloutBackend) -> tuple[RolloutState, str | None]:
        """Promote the canary (its version is the one recorded)."""
        version = backend.state().canary
        return backend.promote(), version


class Rollback(Action):
    """All traffic back to stable."""

    name = "rollback"

    def act(self, backend: RolloutBackend) -> tuple[RolloutState, str | None]:
        """Roll the canary back (its version is the one recorded)."""
        version = backend.state().canary
        return backend.rollback(), version


class Canary(BaseModel):
    """Canary rollouts: start one, or change its share."""

    start: CliSubCommand[CanaryStart] = Field(description="Route a share of traffic to VERSION.")
    set: CliSubCommand[CanarySet] = Field(description="Change the canary's share.")


class Shadow(BaseModel):
    """Shadow rollouts: mirror traffic to a version, or stop."""

    start: CliSubCommand[ShadowStart] = Field(description="Mirror traffic to VERSION.")
    stop: CliSubCommand[ShadowStop] = Field(description="Stop mirroring.")


class Status(BaseModel):
    """Stable, canary and shadow versions, the traffic split and the last decisions."""


class History(BaseModel):
    """The audit trail, oldest first."""

    limit: int = Field(20, ge=1, description="How many of the latest entries.")


class KubectlRelearn(RolloutTarget, ToolCommand):
    """Canary and shadow rollouts of relearn models (KServe + Istio, or the local router).

    Every option before the command is also an environment variable RELEARN_ROLLOUT_<OPTION>.
    """

    model_config = command_config(
        "kubectl relearn",
        "RELEARN_ROLLOUT_",
        cli_enforce_required=True,
        cli_shortcuts={"namespace": "n", "output": "o"},
    )

    output: Literal["text", "json"] = Field("text", description="Print text or JSON.")
    status: CliSubCommand[Status] = Field(
        description="Stable/canary/shadow versions, traffic split, last decisions."
    )
    register_: CliSubCommand[Register] = Field(  # register: ABCMeta's, taken
        alias="register",
        description="--backend local: where VERSION is served (the first registered version becomes stable).",
    )
    canary: CliSubCommand[Canary] = Field(description="Canary rollouts: start | set.")
    shadow: CliSubCommand[Shadow] = Field(description="Shadow rollouts: start | stop.")
    promote: CliSubCommand[Promote] = Field(description="Make the canary stable.")
    rollback: CliSubCommand[Rollback] = Field(description="All traffic back to stable.")
    history: CliSubCommand[History] = Field(description="The audit trail.")
    experiment: CliSubCommand[Experiments] = Field(
        description="A/B experiments and bandits between model versions: "
        "start|status|stop|list|analyze|update-bandit|promote|simulate"
    )

    def execute(self, backend: RolloutBackend | None = None) -> int:
        """Run the command; returns the exit status (1: the rollout refused, nothing changed)."""
        sub = get_subcommand(self, is_required=False)
        if isinstance(sub, (Canary, Shadow)):
            sub = get_subcommand(sub, is_required=False)
        if sub is None:  # a usage error, as argparse's: status 2
            print("error: give a command (kubectl relearn --help lists them)", file=sys.stderr)
            return 2
        if isinstance(sub, Experiments):
            return sub.execute(rollout=self.target())
        audit = audit_log_for(self.audit_log)
        if isinstance(sub, History):
            entries = audit.entries(sub.limit)
            lines = [
                f"{e['time']}  {e['action']:<14} {e.get('version') or '':<8} {e['reason']}" for e in entries
            ]
            self.show(entries, "\n".join(lines) or "no rollout actions recorded")
            return 0
        if isinstance(sub, Register) and self.backend != "local":
            print(
                "error: register is for --backend local (KServe serves versions in a cluster)",
                file=sys.stderr,
            )
            return 1
        backend = backend or make_backend(self)
        try:
            if isinstance(sub, Status):
                return _status(self, backend, audit)
            state, version = sub.act(backend)
        except (RolloutError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        entry = audit.append(
            sub.name,
            actor=f"kubectl-relearn/{getpass.getuser()}",
            reason=sub.reason,
            version=version,
            percent=getattr(sub, "percent", None),
            backend=self.backend,
            state=state.to_dict(),
        )
        self.show(
            entry,
            f"{sub.name}: stable={state.stable} canary={state.canary or '-'} ({state.canary_percent}%) "
            f"shadow={state.shadow or '-'} ({state.mirror_percent:g}%)",
        )
        return 0

    def show(self, data: Any, text: str) -> None:
        """Print ``data`` as JSON with ``-o json``, else ``text``."""
        print(json.dumps(data, indent=1) if self.output == "json" else text)

    def target(self) -> dict[str, Any]:
        """The rollout options given (or defaulted from the environment)."""
        return {name: getattr(self, name) for name in RolloutTarget.model_fields}


def _status(cli: KubectlRelearn, backend: RolloutBackend, audit: Any) -> int:
    state, last = backend.state(), audit.entries(5)
    text = (
        f"stable: {state.stable}\ncanary: {state.canary or '-'} ({state.canary_percent}%)\n"
        f"shadow: {state.shadow or '-'} (mirror {state.mirror_percent:g}%)"
    )
    if last:
        text += "\nlast decisions:\n" + "\n".join(f"  {e['time']} {e['action']} {e['reason']}" for e in last)
    cli.show({"state": state.to_dict(), "last_decisions": last}, text)
    return 0


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv``) and RELEARN_ROLLOUT_*, run the command, return its status.

    A bad option exits 2 naming it, before anything ran; ``--help`` exits 0.
    """
    return commands.run(KubectlRelearn, argv, "kubectl relearn").exit_code


def main(argv: list[str] | None = None) -> None:
    """Console script ``kubectl-relearn``."""
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
