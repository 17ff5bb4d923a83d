"""Keeps the snapshot cache up to date: a snapshot for every watched proxy class, built from the config and
its modules' states as they are now. The cache wakes only the streams whose class's version changed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

from controlplane.model import Config, ModuleKey, ModuleStatus, ProxyClass
from controlplane.snapshots.builder import SnapshotBuilder
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

Inputs = tuple[Config, Mapping[ModuleKey, ModuleStatus]]


class SnapshotPublisher:
    def __init__(
        self,
        builder: SnapshotBuilder,
        inputs: Callable[[], Inputs],
        timed: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        """`inputs()` gives the config and module states to build from; each build runs inside `timed()`."""
        self._builder = builder
        self._inputs = inputs
        self._timed = timed
        self._built_from: object = None
        """What the snapshots were last built from: the config and the modules' states."""
        self.cache: SnapshotCache[ProxyClass] = SnapshotCache(self._first_watch, builder.forget)

    def publish(self) -> list[ProxyClass]:
        """Builds a new snapshot for every watched class and returns the classes whose version changed. A
        rescan or an event that changed neither the config nor a module's state costs nothing per class."""
        config, modules = self._inputs()
        built_from = (config, dict(modules))
        if built_from == self._built_from:
            return []
        self._built_from = built_from
        self._builder.retain(config, modules)
        changed = [p for p in self.cache.watched_keys() if self.cache.set(p, self._build(p, config, modules))]
        if changed:
            # A count: a class is named by labels its proxies chose, of any size.
            log.info("new config for %d proxy classes", len(changed))
        return changed

    def _first_watch(self, proxy: ProxyClass) -> None:
        self.cache.set(proxy, self._build(proxy, *self._inputs()))

    def _build(self, proxy: ProxyClass, config: Config, modules: Mapping[ModuleKey, ModuleStatus]) -> Snapshot:
        with self._timed():
            return self._builder.build(config, modules, proxy)
