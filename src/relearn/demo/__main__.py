"""``python -m relearn.demo`` (``relearn-demo``, ``make demo``): the loop on one machine, then a report."""

from __future__ import annotations

import signal
import sys

from pydantic_settings import CliApp

from relearn.demo.settings import DemoSettings
from relearn.demo.stack import StackError
from relearn.logs import configure_logging


class DemoCommand(DemoSettings):
    """Run relearn's whole loop on this machine: train, serve, drift, retrain, shadow, canary, promote.

    The world is simulated (card transactions with delayed chargebacks); a drift scenario starts part-way
    through the live stream. Every option is also an environment variable RELEARN_DEMO_<OPTION>.
    """

    def cli_cmd(self) -> None:
        """Run the loop, write the report and summary; exit non-zero if the replay or a request failed."""
        from relearn.demo import loop, report

        configure_logging(self.log_level)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as cleanly as Ctrl-C
        try:
            outcome = loop.run(self)
        except StackError as exc:
            sys.exit(f"relearn-demo: {exc}")
        except KeyboardInterrupt:  # before the replay started; everything is stopped already
            sys.exit("relearn-demo: interrupted")
        page, summary = report.write(outcome)
        print("\n" + report.terminal_table(summary))
        print(f"\n  report: {page}")
        if outcome.interrupted:
            sys.exit(130)
        if failed := outcome.timeline.first("replay-failed"):
            sys.exit(f"relearn-demo: the replay failed: {failed['error']}")
        if summary["failed"] or outcome.ports_left_open or outcome.left_running:
            sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    CliApp.run(DemoCommand, cli_args=argv)


if __name__ == "__main__":
    main()
