"""Shared fixtures: every test gets its own relearn home (MLflow, Feast, data) under tmp_path."""

from __future__ import annotations

import pytest

from relearn.settings import RelearnSettings


@pytest.fixture
def settings(tmp_path, monkeypatch) -> RelearnSettings:
    """RelearnSettings rooted in a fresh temporary home, also exported for subprocesses."""
    home = tmp_path / "relearn-home"
    # Environment, not a mock: subprocesses (kfp.local tasks) read the same settings.
    monkeypatch.setenv("RELEARN_HOME", str(home))
    return RelearnSettings(home=home)
