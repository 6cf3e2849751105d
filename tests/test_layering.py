"""The layering of src/relearn: no module imports from a layer above its own.

The layers, bottom to top, are the table :data:`LAYERS` (relearn's package docstring says the same in
words, checked below). A module may import from its own layer and the layers below. Every import counts:
module level, inside functions, under ``TYPE_CHECKING``, relative or absolute. A top-level module not in
the table belongs to the base layer (dependency-free helpers); a ``__main__`` module is an entry point.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import relearn

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. Packages (and top-level modules) on one line share a layer and may import each other.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "relearn",
            "relearn.errors",
            "relearn.logs",
            "relearn.settings",
            "relearn.events",
            "relearn.kube",
            "relearn.routing",
        ),
    ),
    ("data", ("relearn.data",)),
    ("features", ("relearn.features",)),
    ("model, monitoring", ("relearn.model", "relearn.monitoring")),
    ("serving", ("relearn.serving",)),
    ("rollout, experiments", ("relearn.rollout", "relearn.experiments")),
    ("entry points", ("relearn.demo", "relearn.steps", "relearn.training", "relearn.evaluation")),
)
ENTRY = len(LAYERS) - 1

# Upward imports being removed by work in progress: (importing module, imported package). Each must still
# exist (test_pending_upward_imports_still_exist), so the set only shrinks.
PENDING_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path, src: Path) -> str:
    """``relearn.x.y`` for ``src/relearn/x/y.py`` (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, src: Path) -> int:
    """The layer index of a module of the relearn package under ``src``."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return ENTRY
    head = ".".join(parts[:2])
    for index, (_, members) in enumerate(LAYERS):
        if head in members:
            return index
    if (src / "relearn" / parts[1]).is_dir():
        raise LookupError(f"package {head} has no layer: add it to LAYERS in tests/test_layering.py")
    return 0  # a new top-level module: dependency-free, the base layer


def _is_module(name: str, src: Path) -> bool:
    path = src.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, src: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every relearn module ``path`` imports, wherever the import stands."""
    module = module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if _is_module(name, src) else base))
    return [(line, name) for line, name in found if name == "relearn" or name.startswith("relearn.")]


def upward_imports(src: Path) -> list[str]:
    """Every upward import under ``src/relearn`` as ``file:line: edge``, the pending ones left out."""
    names = [name for name, _ in LAYERS]
    problems = []
    for path in sorted((src / "relearn").rglob("*.py")):
        importer = module_name(path, src)
        own = layer_of(importer, src)
        for line, target in imports(path, src):
            theirs = layer_of(target, src)
            if theirs > own and (importer, ".".join(target.split(".")[:2])) not in PENDING_UPWARD:
                problems.append(
                    f"{path.relative_to(src.parent)}:{line}: {importer} ({names[own]}) imports {target} "
                    f"({names[theirs]}), a higher layer"
                )
    return problems


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(SRC) == []


def test_pending_upward_imports_still_exist():
    edges = {
        (module_name(path, SRC), ".".join(target.split(".")[:2]))
        for path in (SRC / "relearn").rglob("*.py")
        for _, target in imports(path, SRC)
    }
    assert edges >= PENDING_UPWARD, f"removed: delete {PENDING_UPWARD - edges} from PENDING_UPWARD"


def test_every_package_has_a_layer():
    for init in (SRC / "relearn").glob("*/__init__.py"):
        layer_of(module_name(init, SRC), SRC)  # raises for a package missing from LAYERS


def test_package_docstring_states_the_layers():
    words = " → ".join(", ".join(m.removeprefix("relearn.") for m in members) for _, members in LAYERS[1:-1])
    assert words in " ".join((relearn.__doc__ or "").split())


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_an_upward_import_is_found_wherever_it_stands(tmp_path: Path):
    """The scanner itself: function-level, relative and ``from pkg import module`` imports all count."""
    _write(
        tmp_path / "src",
        {
            "relearn/__init__.py": "",
            "relearn/logs.py": "",
            "relearn/data/__init__.py": "",
            "relearn/data/io.py": "from relearn import logs\nfrom . import rows\n",
            "relearn/data/rows.py": "def f():\n    from ..serving import batch\n",
            "relearn/features/__init__.py": "",
            "relearn/features/spec.py": "from relearn.data import io\nfrom relearn.model import net\n",
            "relearn/model/__init__.py": "",
            "relearn/model/net.py": "import relearn.monitoring.store\n",
            "relearn/monitoring/__init__.py": "",
            "relearn/monitoring/store.py": "",
            "relearn/serving/__init__.py": "",
            "relearn/serving/batch.py": "from relearn.demo import loop\n",
            "relearn/demo/__init__.py": "",
            "relearn/demo/loop.py": "from relearn.serving import batch\n",
        },
    )
    assert upward_imports(tmp_path / "src") == [
        "src/relearn/data/rows.py:2: relearn.data.rows (data) imports relearn.serving.batch (serving), "
        "a higher layer",
        "src/relearn/features/spec.py:2: relearn.features.spec (features) imports relearn.model.net "
        "(model, monitoring), "
        "a higher layer",
        "src/relearn/serving/batch.py:1: relearn.serving.batch (serving) imports relearn.demo.loop "
        "(entry points), a higher layer",
    ]


def test_a_package_without_a_layer_is_refused(tmp_path: Path):
    _write(tmp_path, {"relearn/__init__.py": "", "relearn/newpkg/__init__.py": ""})
    with pytest.raises(LookupError, match=r"relearn\.newpkg has no layer"):
        upward_imports(tmp_path)
