"""Feast's file registry, replaced atomically: readers see the old or the new one, never a partial one.

Feast's ``FileRegistryStore`` rewrites the registry file in place (``open(path, "wb")`` truncates it first),
so a process reading it during an apply (a transformer, the demo's feature writes) could parse an empty or
half-written proto and fail, e.g. ``KeyError('user_features')``. :class:`AtomicFileRegistryStore` writes a
temporary file in the same directory, fsyncs it and ``os.replace``-s it over the registry: on POSIX the path
names the complete old file or the complete new one at every instant, and an open reader keeps its file.

Selected with ``registry_store_type: relearn.features.registry_file.AtomicFileRegistryStore`` in
``feature_store.yaml`` (:func:`relearn.features.store.registry_config`; the chart's registry server too).
"""

from __future__ import annotations

import contextlib
import os
import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

# Rounds of re-reading when the file was replaced during a read (see get_registry_proto).
_READ_ATTEMPTS = 5


class AtomicFileRegistryStore(FileRegistryStore):
    """A ``FileRegistryStore`` that replaces the registry file atomically instead of rewriting it in place.

    A subclass of Feast's store, not only of ``RegistryStore``: Feast's ``Registry`` watches the file's mtime
    (and refreshes its cache when it changes) only for ``FileRegistryStore`` instances. Teardown (unlink) and
    the project-metadata helpers are upstream's.
    """

    def get_registry_proto(self) -> RegistryProto:
        """The registry proto from one complete file (the old or the new one if it is being replaced).

        Re-read when the path names another file once the read is done: Feast's ``Registry`` stats the path
        right after this returns and keeps that mtime as the cached proto's, so returning the old content
        with the new file's mtime would leave the cache stale until its TTL runs out.
        """
        for _ in range(_READ_ATTEMPTS):
            try:
                with open(self._filepath, "rb") as file:
                    data = file.read()
                    current = os.fstat(file.fileno()).st_ino == os.stat(self._filepath).st_ino
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f'Registry not found at path "{self._filepath}". Have you run "feast apply"?'
                ) from exc
            if current:
                break
        return RegistryProto.FromString(data)

    def update_registry_proto(self, registry_proto: RegistryProto) -> None:
        """Write the proto to a temporary file beside the registry, fsync it, rename it over the registry."""
        registry_proto.version_id = str(uuid.uuid4())  # as upstream: every write is a new version
        registry_proto.last_updated.FromDatetime(_utc_now())
        directory = self._filepath.parent
        directory.mkdir(parents=True, exist_ok=True)
        # Same directory, hence same filesystem: os.replace is an atomic rename there.
        temporary = directory / f".{self._filepath.name}.{uuid.uuid4().hex}.tmp"
        # O_EXCL on a unique name; mode 0o666 minus the umask, as upstream's open(path, "wb") creates it.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(registry_proto.SerializeToString())
                file.flush()
                os.fsync(file.fileno())  # the data is on disk before the name points at it
            os.replace(temporary, self._filepath)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)


def _fsync_directory(directory: os.PathLike[str]) -> None:
    """Persist the rename itself (best effort: not every platform or filesystem can fsync a directory)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
