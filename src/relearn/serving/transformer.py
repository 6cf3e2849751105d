"""``python -m relearn.serving.transformer``: see :class:`relearn.serving.config.TransformerSettings`."""

from __future__ import annotations

from relearn.logs import configure_logging
from relearn.serving.config import TransformerSettings, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too) and run the transformer."""
    configure_logging()
    run_cli(TransformerSettings, argv)


if __name__ == "__main__":
    main()
