"""``python -m relearn.serving.predictor``: see :class:`relearn.serving.config.PredictorSettings`."""

from __future__ import annotations

from pydantic_settings import CliApp

from relearn.logs import configure_logging
from relearn.serving.config import PredictorSettings


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them) and run the predictor."""
    configure_logging()
    CliApp.run(PredictorSettings, cli_args=argv)


if __name__ == "__main__":
    main()
