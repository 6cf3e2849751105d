"""``python -m relearn.serving.transformer``: see :class:`relearn.serving.config.TransformerSettings`."""

from __future__ import annotations

from pydantic_settings import CliApp

from relearn.logs import configure_logging
from relearn.serving.config import TransformerSettings


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them) and run the transformer."""
    configure_logging()
    CliApp.run(TransformerSettings, cli_args=argv)


if __name__ == "__main__":
    main()
