"""``python -m relearn.serving.predictor``: see :class:`relearn.serving.config.PredictorSettings`."""

from __future__ import annotations

from relearn.logs import configure_logging
from relearn.serving.config import PredictorSettings, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too) and run the predictor."""
    configure_logging()
    run_cli(PredictorSettings, argv)


if __name__ == "__main__":
    main()
