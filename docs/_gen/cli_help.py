"""Print every entry point's ``--help`` as JSON.

cli.py runs it in a process of its own, so the entry points' imports and logging set-up stay out of MkDocs'
process.

An entry point is a module under src/relearn, pipelines/ or benchmarks/ with a ``__main__`` block (or a
package's ``__main__.py``): a new one is documented without touching the docs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def entry_points() -> list[str]:
    """The importable names of the modules that run as ``python -m``, sorted."""
    found = []
    for base, prefix in (
        (ROOT / "src", ()),
        (ROOT / "pipelines", ("pipelines",)),
        (ROOT / "benchmarks", ("benchmarks",)),
    ):
        for path in sorted(base.rglob("*.py")):
            text = path.read_text()
            if path.name != "__main__.py" and 'if __name__ == "__main__"' not in text:
                continue
            parts = prefix + path.relative_to(base).with_suffix("").parts
            found.append(".".join(p for p in parts if p != "__main__"))
    return sorted(set(found))


def help_text(module: str) -> str:
    """What ``python -m <module> --help`` prints; raises if it does not exit 0."""
    out = io.StringIO()
    sys.argv = [f"python -m {module}", "--help"]
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code
    if code not in (0, None):
        raise SystemExit(f"python -m {module} --help exited {code}:\n{out.getvalue()}")
    return out.getvalue()


def main() -> None:
    """Print ``{module: help}`` for every entry point."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same width on every machine
    sys.path[:0] = [str(ROOT), str(ROOT / "src")]
    helps = {module: help_text(module) for module in entry_points()}
    sys.__stdout__.write(json.dumps(helps))


if __name__ == "__main__":
    main()
