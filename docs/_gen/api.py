"""Generate the Python API reference pages at build time (mkdocs-gen-files).

One page per package of src/relearn (mkdocstrings renders the docstrings of the package and its modules),
and one for the top-level modules.

A new package gets a page by itself; mkdocs.yml's nav must list it (``--strict`` fails on a page outside
the nav), so the reference cannot silently miss it.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "relearn"


def generate() -> None:
    """Write reference/api/<package>.md and reference/api/core.md."""
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    for name in packages:
        with mkdocs_gen_files.open(f"reference/api/{name}.md", "w") as page:
            page.write(f"# relearn.{name}\n\n::: relearn.{name}\n    options:\n      show_submodules: true\n")
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    with mkdocs_gen_files.open("reference/api/core.md", "w") as page:
        page.write("# relearn (top-level modules)\n\n")
        page.write("\n".join(f"::: relearn.{m}\n" for m in modules))


generate()
