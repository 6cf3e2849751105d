"""``python -m relearn.serving.predictor``: see :class:`relearn.serving.config.PredictorSettings`."""

from __future__ import annotations

from relearn.logs import configure_logging
from relearn.serving.config import PredictorSettings, run_cli, strip_argv


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too), load the model and serve."""
    configure_logging()
    settings = run_cli(PredictorSettings, argv)
    strip_argv()  # before kserve is imported: it parses sys.argv
    from relearn.serving import server
    from relearn.serving.payload_log import payload_logger_for
    from relearn.serving.predictor_model import FraudPredictor

    payload_logger = payload_logger_for(settings)
    server.serve(FraudPredictor(settings, payload_logger), settings, payload_logger)


if __name__ == "__main__":
    main()
