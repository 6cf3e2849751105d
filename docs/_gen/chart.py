"""Generate reference/chart-values.md at build time (mkdocs-gen-files).

From charts/relearn/values.yaml (defaults and ``# --`` comments) and values.schema.json (types, enums and
the keys values.yaml leaves unset).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mkdocs_gen_files

CHART = Path(__file__).resolve().parents[2] / "charts" / "relearn"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<value>.*)$")


def documented_values(text: str) -> dict[str, tuple[str, str]]:
    """``dotted.key -> (default, description)`` for every key of values.yaml, in file order."""
    found: dict[str, tuple[str, str]] = {}
    path: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if comment:
                comment.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("-"):
            comment = [] if not stripped else comment
            continue
        indent = len(match["indent"])
        path = [(i, k) for i, k in path if i < indent] + [(indent, match["key"])]
        value = match["value"].split(" #")[0].strip()
        found[".".join(k for _, k in path)] = (value, " ".join(comment))
        comment = []
    return found


def schema_types(schema: dict, prefix: str = "") -> dict[str, str]:
    """``dotted.key -> type`` (with the allowed values when the schema lists them) for every property."""
    types: dict[str, str] = {}
    for key, spec in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        kind = spec.get("type", "any")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in spec:
            kind += ": " + ", ".join(f"`{v}`" for v in spec["enum"])
        types[name] = kind
        types.update(schema_types(spec, f"{name}."))
    return types


def cell(text: str, html: bool = False) -> str:
    """A table cell: pipes escaped; ``<placeholders>`` shown, not read as HTML, outside code spans."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;") if html else text


def generate() -> None:
    """Write the table of every key."""
    values = documented_values((CHART / "values.yaml").read_text())
    types = schema_types(json.loads((CHART / "values.schema.json").read_text()))
    lines = [
        "# Chart values",
        "",
        "Every key of `charts/relearn/values.yaml`, generated from it (defaults and comments) and from "
        "`values.schema.json` (types; the schema is closed, so an unknown key fails `helm install`) when "
        "the site is built. Keys the schema knows that values.yaml leaves unset have no default.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key in list(values) + [k for k in types if k not in values]:
        default, description = values.get(key, ("", ""))
        shown = f"`{cell(default)}`" if default else ""
        lines.append(f"| `{key}` | {cell(types.get(key, ''))} | {shown} | {cell(description, html=True)} |")
    with mkdocs_gen_files.open("reference/chart-values.md", "w") as page:
        page.write("\n".join(lines) + "\n")


generate()
