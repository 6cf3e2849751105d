"""Upstream CRD schemas from ../shared/crds, closed like a strict API server, for validating custom resources.

The schemas set no ``additionalProperties: false`` themselves; a real API server with strict field validation
rejects unknown fields, so every object schema that lists ``properties`` and does not preserve unknown fields
is closed here (see ../shared/crds/SOURCES.md). A typo such as ``canaryTraficPercent`` then fails.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[2] / "shared" / "crds"


def close_schema(schema: Any) -> Any:
    """Reject unknown fields like a strict API server: close every object schema that lists properties."""
    if isinstance(schema, dict):
        schema = {k: close_schema(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [close_schema(s) for s in schema]
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a validator of the closed openAPIV3Schema, for every version of every CRD."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = close_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                # apiVersion/kind/metadata are the API server's, whether or not a CRD lists them.
                for field in ("apiVersion", "kind"):
                    schema.setdefault("properties", {}).setdefault(field, {"type": "string"})
                schema["properties"].setdefault("metadata", {"type": "object"})
                out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of a custom resource, as ``path: message``; empty when it is valid."""
    validator = crd_validators().get((doc["apiVersion"], doc["kind"]))
    assert validator is not None, f"no CRD in {CRDS} for {doc['apiVersion']} {doc['kind']}"
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
