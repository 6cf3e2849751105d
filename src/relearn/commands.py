"""One way to start a relearn process: a pydantic-settings command, JSON logs, impossible settings refused.

Every entry point (``python -m relearn.<x>``) is a settings class whose ``cli_cmd`` does the work, so each
option is at once a ``--kebab-case`` flag, an environment variable (the class's prefix) and a field with
bounds and a description that ``--help`` prints. Base layer: imports nothing from relearn but ``logs``.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from relearn.logs import configure_logging


def cli_options(**options: Any) -> list[str]:
    """``--kebab-name value`` pairs: the argv a command (or ``pipelines.run``) parses back into fields."""
    return [x for name, value in options.items() for x in (f"--{name.replace('_', '-')}", str(value))]


def command_config(prog: str, env_prefix: str, **options: Any) -> SettingsConfigDict:
    """The settings config every command shares: its ``--help`` name, environment prefix and flag style."""
    return SettingsConfigDict(
        env_prefix=env_prefix,
        extra="ignore",
        cli_prog_name=prog,
        cli_kebab_case=True,
        cli_implicit_flags=True,  # booleans are bare flags: --once, --json
        cli_hide_none_type=True,
        **options,
    )


class Command(BaseSettings):
    """A command's shared option; subclasses set ``model_config = command_config(...)`` and ``cli_cmd``."""

    log_level: str = Field("INFO", description="Log level of the JSON-lines log on stderr.")

    def start_logging(self) -> None:
        """JSON lines on stderr at ``log_level`` (every relearn process logs the same way)."""
        configure_logging(self.log_level)


class ToolCommand(Command):
    """A command whose work ends with an exit status (a tool such as ``kubectl relearn``: 0 done).

    Subclasses define ``execute() -> int``; ``commands.run(...).exit_code`` is the status it returned.
    """

    _exit_code: int = PrivateAttr(0)

    @property
    def exit_code(self) -> int:
        """The status ``execute`` returned."""
        return self._exit_code

    def execute(self) -> int:
        """Do the work; returns the exit status."""
        raise NotImplementedError

    def cli_cmd(self) -> None:
        """JSON lines on stderr, then the work (its output on stdout)."""
        self.start_logging()
        self._exit_code = self.execute()


def run(command: type[BaseSettings], argv: list[str] | None, what: str) -> Any:
    """Parse ``argv`` (default: ``sys.argv``) and the environment into ``command`` and run its ``cli_cmd``.

    Returns the parsed command (its ``cli_cmd`` may leave a result on it); settings that fail validation
    exit with status 2 and a message naming each bad option, before anything started.
    """
    try:
        return CliApp.run(command, cli_args=argv)
    except ValidationError as error:
        print(f"{what} not started, invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from None  # argparse's status for a usage error
