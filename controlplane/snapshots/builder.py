"""Turns the loaded config, the state of its modules and a proxy class into the snapshot that class is
served. Translation is pure; what it cannot know from one config alone lives here: the plugins each
ECDS-only class was sent (a plugin deleted from the directory still has a filter naming it on that
proxy's own listeners, so it gets a pass-through config rather than a removal), and each plugin's ECDS
config, made once and shared by every class that gets it (with its module inside: one copy, however many
label sets)."""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.model import Config, ModuleKey, ModuleStatus, PluginType, ProxyClass
from controlplane.snapshots.plugin_configs import PluginConfigs
from controlplane.translate.resources import ModuleCode, TranslateSettings, ecds_name, translate
from controlplane.translate.selection import select_plugins
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot


class SnapshotBuilder:
    def __init__(self, settings: TranslateSettings, code: ModuleCode) -> None:
        """`code(sha256)` gives a verified module's bytes, for the configs that carry them inline."""
        self._settings = settings
        self._configs = PluginConfigs(settings, code)
        self._sent: dict[ProxyClass, dict[str, PluginType]] = {}
        """Per ECDS-only class, every plugin it was sent, by ECDS name."""

    def build(self, config: Config, modules: Mapping[ModuleKey, ModuleStatus], proxy: ProxyClass) -> Snapshot:
        """The snapshot of `proxy`'s class: its clusters, listeners and ECDS configs. `modules` is the status
        of every module the config needs; one missing is still being fetched, and the listeners that use
        it wait for its config while Envoy warms them."""
        retired: dict[str, PluginType] = {}
        if proxy.standalone_ecds:
            plugins = select_plugins(config, proxy, self._settings.root_namespace)
            sent = self._sent.setdefault(proxy, {})
            current = {ecds_name(p) for p in plugins}
            retired = {name: plugin_type for name, plugin_type in sent.items() if name not in current}
            sent.update({ecds_name(p): p.type for p in plugins})
        resources = translate(
            config, proxy, modules, self._settings, retired=retired, extension_config=self._configs.config
        )
        return Snapshot.of(
            {CLUSTER: resources.clusters, LISTENER: resources.listeners, EXTENSION_CONFIG: resources.extension_configs},
            make=self._configs.resource,
        )

    def retain(self, config: Config, modules: Mapping[ModuleKey, ModuleStatus]) -> None:
        """Forgets the ECDS configs of plugins and module states that are gone: called before each rebuild."""
        self._configs.retain(config.plugins, modules)

    def forget(self, proxy: ProxyClass) -> None:
        """Called when the last stream of the class goes (its last watch is cancelled), so that classes made
        up from arbitrary node labels cannot grow what is remembered."""
        self._sent.pop(proxy, None)
