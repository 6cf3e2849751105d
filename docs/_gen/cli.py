"""Generate reference/cli.md at build time (mkdocs-gen-files): the ``--help`` of every entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GROUPS = {"relearn": "The package's commands", "pipelines": "Pipelines", "benchmarks": "Benchmarks"}


def generate() -> None:
    """Run cli_help.py in its own process and write one section per entry point."""
    # A user's shell without relearn settings, so the defaults shown are the defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEARN_", "MLFLOW_"))}
    done = subprocess.run(
        [sys.executable, str(HERE / "cli_help.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"docs/_gen/cli_help.py failed:\n{done.stderr[-4000:]}")
    helps: dict[str, str] = json.loads(done.stdout)
    lines = [
        "# Command line",
        "",
        "Every entry point's `--help`, generated from the code when the site is built "
        "(`docs/_gen/cli_help.py`). Run them in the platform environment "
        "(`source .venv/platform/bin/activate`); the drift detector's, `relearn.monitoring.server`, "
        "runs in `.venv/drift` (`make drift`). `kubectl relearn` is `relearn.rollout.cli`.",
        "",
    ]
    for group, title in GROUPS.items():
        lines += [f"## {title}", ""]
        for module, text in helps.items():
            if module.split(".")[0] == group:
                lines += [f"### `python -m {module}`", "", "```text", text.rstrip(), "```", ""]
    with mkdocs_gen_files.open("reference/cli.md", "w") as page:
        page.write("\n".join(lines))
    mkdocs_gen_files.set_edit_path("reference/cli.md", "_gen/cli_help.py")


generate()
