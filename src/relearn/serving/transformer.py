"""``python -m relearn.serving.transformer``: see :class:`relearn.serving.config.TransformerSettings`."""

from __future__ import annotations

from relearn.logs import configure_logging
from relearn.serving.config import TransformerSettings, run_cli, strip_argv


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too) and serve until interrupted.

    The transformer opens the streaming state (``RELEARN_STATE_*``) and connects to the predictor.
    """
    configure_logging()
    settings = run_cli(TransformerSettings, argv)
    strip_argv()  # before kserve is imported: it parses sys.argv
    from relearn.serving import server
    from relearn.serving.transformer_model import FraudTransformer

    server.serve(FraudTransformer(settings), settings)


if __name__ == "__main__":
    main()
