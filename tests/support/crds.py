"""Upstream CRD schemas from ../shared/crds, closed like a strict API server, for validating custom resources.

The schemas set no ``additionalProperties: false`` themselves; a real API server with strict field validation
rejects unknown fields, so every object schema that lists ``properties`` and does not preserve unknown fields
is closed here (see ../shared/crds/SOURCES.md). A typo such as ``canaryTraficPercent`` then fails.

The tests that need them skip when the folder is missing (a user's clone), with the reason in the summary;
in CI (``CI=true``) the conftest turns those skips into failures, since a run there must check them.
``RELEARN_TEST_CRDS_DIR`` points elsewhere.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml

SHARED_CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds"
CRDS = Path(os.environ.get("RELEARN_TEST_CRDS_DIR") or SHARED_CRDS)
MISSING = (
    f"{CRDS} is missing: the upstream CRD schemas that custom resources are validated against "
    "(the relearn checkout's ../shared/crds, see tests/support/crds.py)"
)


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab and most others set it): missing CRDs fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def needs_crds_skip(report: Any) -> bool:
    """Whether a test report is a skip because the CRDs are missing (its reason names their folder)."""
    return bool(report.skipped) and not CRDS.is_dir() and str(CRDS) in str(report.longrepr)


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
    import jsonschema  # the platform environment's; the drift one loads this module without it

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
