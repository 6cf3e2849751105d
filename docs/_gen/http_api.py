"""Generate reference/http.md at build time (mkdocs-gen-files): the HTTP routes of relearn's own servers.

Found in the code (Starlette ``Route(...)`` calls and FastAPI ``@app.<verb>(...)`` decorators), with the
first line of each handler's docstring; the KServe protocols the predictor, transformer and explainer
speak are upstream's and are described, not generated.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mkdocs_gen_files

SRC = Path(__file__).resolve().parents[2] / "src"
VERBS = {"get", "post", "put", "patch", "delete"}
INTRO = """# HTTP and gRPC APIs

**Prediction** is KServe's, unchanged, so any standard client works (the conformance table is in
[Serving](../guide/serving.md)): v1 REST `POST /v1/models/{model}:predict` (and `:explain` on the
explainer), v2 REST `POST /v2/models/{model}/infer` with `/v2/health/live`, `/v2/health/ready`,
`/v2/models/{model}` and `/v2/models/{model}/ready`, and v2 gRPC `inference.GRPCInferenceService`
(ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer; server reflection on, so
grpcurl needs no proto file), on ports 8080 (HTTP) and 8081 (gRPC) by default.

**Payload logging** is KServe's logger format: CloudEvents v1.0 in binary mode (`ce-type`
`org.kubeflow.serving.inference.request` / `.response`, one `ce-id` for a request and its response), which
the drift detector takes as a `POST` to any path other than its own routes below; relearn's predictor also
posts them batched (64 events per POST).

The routes of relearn's own servers, generated from the code when the site is built
(`docs/_gen/http_api.py`):

| server | method | path | what it does |
|---|---|---|---|
"""


def _first_line(fn: ast.AST | None) -> str:
    doc = ast.get_docstring(fn) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) else None
    return doc.strip().splitlines()[0].replace("|", "\\|") if doc else ""


def routes_in(path: Path) -> list[tuple[str, str, str]]:
    """``(methods, path, doc)`` of every route a module declares."""
    tree = ast.parse(path.read_text())
    handlers = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Route" and node.args:
            route, handler = node.args[0], node.args[1] if len(node.args) > 1 else None
            methods = next((k.value for k in node.keywords if k.arg == "methods"), None)
            listed = isinstance(methods, ast.List)
            verbs = [e.value for e in methods.elts] if listed else ["GET"] if methods is None else ["any"]
            fn = handlers.get(handler.id) if isinstance(handler, ast.Name) else None
            if isinstance(route, ast.Constant):
                found.append((", ".join(verbs), route.value, _first_line(fn)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                verb = getattr(deco.func, "attr", "") if isinstance(deco, ast.Call) else ""
                if verb in VERBS and deco.args and isinstance(deco.args[0], ast.Constant):
                    found.append((verb.upper(), deco.args[0].value, _first_line(node)))
    return found


def generate() -> None:
    """Write the routes table, one row per route."""
    rows = []
    for path in sorted((SRC / "relearn").rglob("*.py")):
        module = path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
        for verbs, route, doc in routes_in(path):
            rows.append(f"| `{module}` | {verbs} | `{route}` | {doc} |")
    with mkdocs_gen_files.open("reference/http.md", "w") as page:
        page.write(INTRO + "\n".join(rows) + "\n")


generate()
