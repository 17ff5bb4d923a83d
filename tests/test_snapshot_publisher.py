"""The publisher keeps a snapshot in the cache for every watched proxy class, and does no work per class
when neither the config nor a module's state changed. In-process: model values in, cache contents out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from controlplane.model import Config, ModuleKey, ModuleReady, ModuleStatus, ProxyClass, labels_from
from controlplane.snapshots.builder import SnapshotBuilder
from controlplane.snapshots.publisher import SnapshotPublisher
from controlplane.translate.resources import TranslateSettings
from controlplane.xds.snapshot import Snapshot
from tests.test_snapshot_builder import Modules
from tests.test_translation import plugin, sidecar

WEB = ProxyClass("default", labels_from({"app": "web"}))
API = ProxyClass("default", labels_from({"app": "api"}))


class CountingBuilder(SnapshotBuilder):
    def __init__(self) -> None:
        super().__init__(TranslateSettings(), Modules())
        self.built: list[ProxyClass] = []

    def build(self, config: Config, modules: Mapping[ModuleKey, ModuleStatus], proxy: ProxyClass) -> Snapshot:
        self.built.append(proxy)
        return super().build(config, modules, proxy)


class Inputs:
    def __init__(self) -> None:
        web = replace(plugin("a"), selector=labels_from({"app": "web"}))
        self.config = Config(plugins=(web,), sidecars=(sidecar("web"),))
        self.modules: dict[ModuleKey, ModuleStatus] = {web.module: ModuleReady("aa" * 32, 8)}

    def __call__(self) -> tuple[Config, Mapping[ModuleKey, ModuleStatus]]:
        return self.config, self.modules


def test_a_class_is_built_when_first_watched_and_dropped_with_its_last_watch() -> None:
    builder, inputs = CountingBuilder(), Inputs()
    publisher = SnapshotPublisher(builder, inputs)
    cancel = publisher.cache.watch(WEB, lambda: None)
    assert builder.built == [WEB]
    assert publisher.cache.get(WEB) is not None
    publisher.cache.watch(WEB, lambda: None)
    assert builder.built == [WEB], "a second stream of the class reuses its snapshot"
    cancel()
    assert publisher.cache.get(WEB) is not None, "one stream of the class still watches it"


def test_a_change_rebuilds_every_watched_class_and_names_those_whose_version_changed() -> None:
    builder, inputs = CountingBuilder(), Inputs()
    publisher = SnapshotPublisher(builder, inputs)
    woken: list[ProxyClass] = []
    for proxy in (WEB, API):
        publisher.cache.watch(proxy, lambda proxy=proxy: woken.append(proxy))
    builder.built.clear()
    woken.clear()
    inputs.config = replace(inputs.config, plugins=(replace(inputs.config.plugins[0], plugin_config='{"limit": 2}'),))
    assert publisher.publish() == [WEB], "only the class the plugin selects has a new version"
    assert sorted(builder.built, key=repr) == sorted([WEB, API], key=repr)
    assert woken == [WEB]


def test_nothing_new_costs_nothing_per_class() -> None:
    builder, inputs = CountingBuilder(), Inputs()
    publisher = SnapshotPublisher(builder, inputs)
    publisher.cache.watch(WEB, lambda: None)
    assert publisher.publish() == []
    builder.built.clear()
    # Equal values, not the same objects: a rescan loads the directory afresh.
    inputs.config = replace(inputs.config)
    inputs.modules = dict(inputs.modules)
    assert publisher.publish() == []
    assert builder.built == []
    inputs.modules = {key: ModuleReady("bb" * 32, 8) for key in inputs.modules}
    assert publisher.publish() == [WEB]
    assert builder.built == [WEB]
