"""The routing protocol (relearn.routing): one definition, dependency-free, and the transformer's wiring.

The transformer reaches the experiments package only through its ``arm_assigner`` setting (serving sits
below experiments); the routing names other modules used to restate are the module's own objects.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import relearn.routing as routing

SRC = Path(__file__).resolve().parents[1] / "src" / "relearn"


def test_the_module_imports_nothing_of_relearn_or_beyond_the_standard_library() -> None:
    tree = ast.parse((SRC / "routing.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    # Importing it loads no other relearn module (the drift detector's environment imports it too).
    code = "import sys, relearn.routing; print(sorted(m for m in sys.modules if m.startswith('relearn')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['relearn', 'relearn.routing']"


def test_other_modules_reexport_the_protocol_rather_than_restate_it() -> None:
    from relearn.experiments import routing as experiments_routing
    from relearn.monitoring import payloads
    from relearn.serving import metrics, payload_log

    assert experiments_routing.ARM_HEADER is routing.ARM_HEADER
    assert experiments_routing.EXPERIMENT_HEADER is routing.EXPERIMENT_HEADER
    assert experiments_routing.model_version is routing.model_version
    assert metrics.track_of is routing.track_of and metrics.shadow_host is routing.shadow_host
    assert metrics.SHADOW_SUFFIX is routing.SHADOW_SUFFIX
    assert payload_log.ROUTE_HEADER is routing.ROUTE_HEADER and payloads.TRACKS is routing.TRACKS
    # No second literal of the headers or the suffix in serving, experiments or monitoring.
    names = (routing.ARM_HEADER, routing.EXPERIMENT_HEADER, routing.ROUTE_HEADER, routing.SHADOW_SUFFIX)
    for package in ("serving", "experiments", "monitoring"):
        for path in (SRC / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    pytest.fail(f"{path.relative_to(SRC)}:{node.lineno} restates {node.value!r}")


@pytest.mark.parametrize(
    ("host", "mirrored", "track"),
    [
        ("svc:80", "svc-shadow:80", "mirror"),
        ("svc.ns.svc.cluster.local", "svc.ns.svc.cluster.local-shadow", "mirror"),
        ("[::1]:8080", "[::1]-shadow:8080", "mirror"),
        ("127.0.0.1:8081", "127.0.0.1-shadow:8081", "mirror"),
    ],
)
def test_a_mirrored_host_is_told_from_a_live_one(host, mirrored, track) -> None:
    assert routing.shadow_host(host) == mirrored
    assert routing.track_of({"host": mirrored}) == track
    assert routing.track_of({":authority": mirrored}) == track
    assert routing.track_of({"host": host}) == "primary"
    assert routing.track_of(None) == "primary"


def test_an_arm_names_its_model_version() -> None:
    assert [routing.model_version(a) for a in ("v7", "7", "vnext", "canary", "")] == [
        "7",
        "7",
        "vnext",
        "canary",
        "",
    ]


def test_the_transformer_gets_its_arm_assigner_by_setting_or_injection(
    settings, tmp_path, monkeypatch
) -> None:
    from relearn.experiments.routing import RunningExperiment
    from relearn.serving.config import TransformerSettings
    from relearn.serving.transformer_model import FraudTransformer

    monkeypatch.setenv("RELEARN_EXPERIMENT_STORE", str(tmp_path / "experiments.json"))
    assert routing.load_assigner("") is None
    wired = FraudTransformer(TransformerSettings())
    wired.load()
    assert isinstance(wired.experiment, RunningExperiment)
    assert wired.experiment.path == tmp_path / "experiments.json"
    alone = FraudTransformer(TransformerSettings(arm_assigner=""))
    alone.load()
    assert alone.experiment is None  # no experiments: nothing of that package is needed

    class OneArm:
        def arms(self, user_ids):
            return "fixed", ["v1"] * len(user_ids)

    injected = OneArm()
    given = FraudTransformer(TransformerSettings(), experiment=injected)
    given.load()
    assert given.experiment is injected
