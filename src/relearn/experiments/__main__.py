"""``python -m relearn.experiments``: see :mod:`relearn.experiments.cli`."""

from relearn.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
