"""The local experiment store: one JSON file of experiments, changed under a lock and replaced atomically.

Refuses what the issue calls bad input before changing anything: an invalid split, a name in use, a
second running experiment over the same traffic, a champion that is not one of the arms.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relearn.experiments.assignment import Split, new_salt

Record = dict[str, Any]


def default_store() -> Path:
    """RELEARN_EXPERIMENT_STORE, else ``<RELEARN_HOME>/experiments/experiments.json``."""
    from relearn.experiments.settings import ExperimentSettings
    from relearn.settings import RelearnSettings

    return ExperimentSettings().store or RelearnSettings().home / "experiments" / "experiments.json"


class ExperimentStore:
    """Experiments by name: split, salt, status, plan and result."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict[str, Record]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def _write(self, data: dict[str, Record]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".experiments-")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(tmp, self.path)  # readers see the old or the new file, never half of one

    def _change(self, fn: Callable[[dict[str, Record]], Record]) -> Record:
        with self._locked():
            data = self._read()
            record = fn(data)
            self._write(data)
            return record

    def list(self) -> list[Record]:
        """Every experiment, oldest first."""
        return sorted(self._read().values(), key=lambda r: r["started"])

    def get(self, name: str) -> Record:
        """One experiment. Raises KeyError with the known names."""
        data = self._read()
        if name not in data:
            raise KeyError(f"no experiment {name!r} (known: {sorted(data)})")
        return data[name]

    def start(
        self,
        name: str,
        split: dict[str, int],
        *,
        control: str,
        traffic: str = "fraud",
        plan: Record | None = None,
        bandit: Record | None = None,
    ) -> Record:
        """Record a running experiment with a fresh salt; refuses bad input with nothing changed.

        With ``bandit`` (:func:`relearn.experiments.bandit_live.bandit_params`) the experiment is a bandit:
        ``split`` is its starting split and its ``shares`` change with :meth:`set_shares`.
        """
        checked = Split.of(split)
        if control not in checked.arms:
            raise ValueError(f"control {control!r} is not among the arms {list(checked.arms)}")

        def add(data: dict[str, Record]) -> Record:
            if name in data:
                raise ValueError(f"experiment {name!r} exists ({data[name]['status']})")
            busy = [r["name"] for r in data.values() if r["status"] == "running" and r["traffic"] == traffic]
            if busy:
                raise ValueError(f"experiment {busy[0]!r} is already running over traffic {traffic!r}")
            data[name] = {
                "name": name,
                "split": checked.as_dict(),
                "control": control,
                "traffic": traffic,
                "salt": new_salt(),
                "status": "running",
                "started": time.time(),
                "stopped": None,
                "reason": "",
                "plan": plan,
                "result": None,
                "kind": "bandit" if bandit else "ab",
            }
            if bandit:
                data[name].update(bandit=bandit, shares={a: p / 100 for a, p in checked.as_dict().items()})
            return data[name]

        return self._change(add)

    def stop(self, name: str, reason: str, result: Record | None = None) -> Record:
        """Mark a running experiment stopped (with its result, when there is one)."""

        def end(data: dict[str, Record]) -> Record:
            if name not in data:
                raise KeyError(f"no experiment {name!r} (known: {sorted(data)})")
            if data[name]["status"] != "running":
                raise ValueError(f"experiment {name!r} is not running ({data[name]['status']})")
            data[name].update(status="stopped", stopped=time.time(), reason=reason, result=result)
            return data[name]

        return self._change(end)

    def set_shares(self, name: str, change: Callable[[Record], Record]) -> Record:
        """Apply ``change(record) -> {"shares": ..., "bandit": ...}`` to a running bandit, under the lock."""

        def apply(data: dict[str, Record]) -> Record:
            if name not in data:
                raise KeyError(f"no experiment {name!r} (known: {sorted(data)})")
            data[name].update(change(data[name]))
            return data[name]

        return self._change(apply)
