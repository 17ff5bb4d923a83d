"""Snapshots by key (a proxy class), and the streams waiting for their key's snapshot to change."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from controlplane.xds.snapshot import Snapshot

K = TypeVar("K", bound=Hashable)


def _nothing(key: object) -> None:
    pass


class SnapshotCache(Generic[K]):
    def __init__(
        self, on_first_watch: Callable[[K], None] = _nothing, on_last_unwatch: Callable[[K], None] = _nothing
    ) -> None:
        """`on_first_watch(key)` runs when a key is watched that has no snapshot yet, so that its owner can
        `set` one; `on_last_unwatch(key)` when the last watcher of a key leaves and its snapshot is dropped."""
        self._snapshots: dict[K, Snapshot] = {}
        self._watchers: dict[K, set[Callable[[], None]]] = {}
        self._on_first_watch = on_first_watch
        self._on_last_unwatch = on_last_unwatch

    def get(self, key: K) -> Snapshot | None:
        return self._snapshots.get(key)

    def set(self, key: K, snapshot: Snapshot) -> bool:
        """Stores the snapshot and wakes the key's watchers; False (and nobody woken) when nothing changed,
        so that a rebuild giving the same content costs the streams nothing."""
        current = self._snapshots.get(key)
        if current is not None and current.version == snapshot.version:
            return False
        self._snapshots[key] = snapshot
        for notify in list(self._watchers.get(key, ())):
            notify()
        return True

    def watched_keys(self) -> list[K]:
        return list(self._watchers)

    def watch(self, key: K, notify: Callable[[], None]) -> Callable[[], None]:
        """Calls `notify` after every change of `key`'s snapshot; returns the function that stops it."""
        self._watchers.setdefault(key, set()).add(notify)
        if key not in self._snapshots:
            self._on_first_watch(key)

        def cancel() -> None:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(notify)
                if not watchers:
                    del self._watchers[key]
                    self._snapshots.pop(key, None)
                    self._on_last_unwatch(key)

        return cancel
