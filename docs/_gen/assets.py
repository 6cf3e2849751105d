"""Copy the images the pages show from where they live in the repository (mkdocs-gen-files).

The demo's report screenshot lives beside the report code (the README shows it from there); the site gets
the same file at build time instead of a second copy in docs/ or a link to one hosting of the repository.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
ASSETS = {"assets/report-screenshot.png": ROOT / "src" / "relearn" / "demo" / "report-screenshot.png"}

for target, source in ASSETS.items():
    with mkdocs_gen_files.open(target, "wb") as out:
        out.write(source.read_bytes())
