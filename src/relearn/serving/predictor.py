"""``python -m relearn.serving.predictor``: see :class:`relearn.serving.config.PredictorSettings`."""

from __future__ import annotations

import sys

from pydantic_settings import CliApp

from relearn.logs import configure_logging
from relearn.serving.config import PredictorSettings, kserve_args


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too) and run the predictor."""
    configure_logging()
    args = sys.argv[1:] if argv is None else argv
    CliApp.run(PredictorSettings, cli_args=kserve_args(args, PredictorSettings))


if __name__ == "__main__":
    main()
