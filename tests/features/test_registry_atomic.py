"""The local file registry is replaced atomically: readers in other processes never see a partial registry.

Feast's own file store rewrites the file in place, so a reader racing a re-apply (a pipeline run while the
demo writes features, or a transformer refreshes) could parse an empty or half-written registry and fail with
``KeyError('user_features')``. Here one process re-applies repeatedly while reader processes load the same
registry fresh, as often as they can; none of their reads may fail.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

from feast import FeatureStore, RepoConfig

from relearn.features import store as fstore
from relearn.features.registry_file import AtomicFileRegistryStore
from relearn.features.spec import USER_VIEW
from relearn.settings import RelearnSettings

APPLIES = 30
READERS = 2  # two cores: the writer and the readers share them


def _reader(repo: str, config: dict[str, Any], ready: Any, writing: Any, stop: Any, results: Any) -> None:
    """Load the registry again and again until ``stop``; report (reads while writing, failures, errors)."""

    def fresh() -> FeatureStore:  # a new Registry parses the file in its constructor
        return FeatureStore(repo_path=repo, config=RepoConfig(repo_path=Path(repo), **config))

    reads, overlapping, failures, errors = 0, 0, 0, []
    store = fresh()
    ready.set()
    while not stop.is_set():
        during = writing.is_set()
        try:
            if reads % 10 == 0:
                store = fresh()
            else:
                store.refresh_registry()  # re-reads the file into the registry cache
            assert store.get_feature_view(USER_VIEW).name == USER_VIEW
        except Exception as exc:  # every kind of failure counts: empty, truncated, missing
            failures += 1
            if len(errors) < 3:
                errors.append(repr(exc)[:200])
        reads += 1
        overlapping += during and writing.is_set()  # the whole read fell within the applies
    results.put((overlapping, failures, errors))


def race(settings: RelearnSettings, store_type: str | None = None) -> tuple[int, int, list[str]]:
    """Re-apply ``APPLIES`` times while ``READERS`` processes read.

    Args:
        settings: Where the feature repo and its file registry live.
        store_type: Overrides the registry store, e.g. ``feast.infra.registry.file.FileRegistryStore``
            (Feast's stock store) to see the race fail.

    Returns:
        The number of reads made while the writer applied, the number of failed reads (at any time), and the
        first errors.
    """
    config = fstore.store_config(settings)
    if store_type is not None:
        config["registry"]["registry_store_type"] = store_type
    repo = fstore.write_repo(settings)
    writer = FeatureStore(repo_path=str(repo), config=RepoConfig(repo_path=repo, **config))
    fstore.apply(writer, settings)  # the registry exists before the readers start

    context = multiprocessing.get_context("spawn")  # no fork of a process with Feast's threads
    writing, stop, results = context.Event(), context.Event(), context.Queue()
    readers = []
    for _ in range(READERS):
        ready = context.Event()
        process = context.Process(target=_reader, args=(str(repo), config, ready, writing, stop, results))
        process.start()
        readers.append((process, ready))
    try:
        for _, ready in readers:
            assert ready.wait(60), "reader did not start"
        objects = fstore.definitions(settings)
        view = next(o for o in objects if getattr(o, "name", None) == USER_VIEW)
        writing.set()
        for round_ in range(APPLIES):
            view.description = f"round {round_}"  # a real change, so the file is rewritten with new content
            writer.apply(objects)
        writing.clear()
        time.sleep(0.2)  # the readers' last reads see the final registry
    finally:
        stop.set()
        outcomes = [results.get(timeout=60) for _ in readers]
        for process, _ in readers:
            process.join(30)
    return (
        sum(overlapping for overlapping, _, _ in outcomes),
        sum(failures for _, failures, _ in outcomes),
        [e for _, _, errors in outcomes for e in errors],
    )


def test_config_selects_the_atomic_store(tmp_path):
    settings = RelearnSettings(home=tmp_path)
    assert fstore.store_config(settings)["registry"] == {
        "registry_type": "file",
        "registry_store_type": fstore.FILE_REGISTRY_STORE,
        "path": settings.registry(),
    }
    store = fstore.get_store(settings)
    assert isinstance(store.registry._registry_store, AtomicFileRegistryStore)
    # Object-store URLs keep Feast's store for their scheme.
    remote = RelearnSettings(home=tmp_path, feast_registry="gs://bucket/registry.db")
    assert fstore.store_config(remote)["registry"] == "gs://bucket/registry.db"


def test_readers_never_see_a_partial_registry(tmp_path):
    settings = RelearnSettings(home=tmp_path)
    overlapping, failures, errors = race(settings)
    assert overlapping >= 10  # the readers really read while the writer applied
    assert failures == 0, errors
    # The last apply is what a fresh reader sees, and no temporary file is left beside the registry.
    registry = Path(settings.registry())
    fresh = FeatureStore(repo_path=str(settings.feature_repo()), config=fstore.repo_config(settings))
    assert fresh.get_feature_view(USER_VIEW).description == f"round {APPLIES - 1}"
    assert [p.name for p in registry.parent.iterdir() if p.name.startswith(".")] == []
