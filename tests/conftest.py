"""Shared fixtures: every test gets its own relearn home (MLflow, Feast, data) under tmp_path."""

from __future__ import annotations

import importlib.util

import pytest

from relearn.settings import RelearnSettings

# tests/drift need alibi-detect, which lives in the drift environment (it pins numpy<2): `make test` runs
# them there; the platform environment skips the folder.
collect_ignore = [] if importlib.util.find_spec("alibi_detect") else ["drift"]


@pytest.fixture
def settings(tmp_path, monkeypatch) -> RelearnSettings:
    """RelearnSettings rooted in a fresh temporary home, also exported for subprocesses."""
    home = tmp_path / "relearn-home"
    # Environment, not a mock: subprocesses (kfp.local tasks) read the same settings.
    monkeypatch.setenv("RELEARN_HOME", str(home))
    return RelearnSettings(home=home)
