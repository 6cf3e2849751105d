"""``python -m relearn.serving.transformer``: see :class:`relearn.serving.config.TransformerSettings`."""

from __future__ import annotations

import sys

from pydantic_settings import CliApp

from relearn.logs import configure_logging
from relearn.serving.config import TransformerSettings, kserve_args


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too) and run the transformer."""
    configure_logging()
    args = sys.argv[1:] if argv is None else argv
    CliApp.run(TransformerSettings, cli_args=kserve_args(args, TransformerSettings))


if __name__ == "__main__":
    main()
