"""Turns the loaded config, the state of its modules and a proxy class into the snapshot that class is
served. Translation is pure; what it cannot know from one config alone lives here: the plugins each
ECDS-only class was sent (a plugin deleted from the directory still has a filter naming it on that
proxy's own listeners, so it gets a pass-through config rather than a removal), and the bytes of the
modules those classes get inline."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from controlplane.model import Config, ModuleKey, ModuleReady, ModuleStatus, PluginType, ProxyClass
from controlplane.translate.resources import TranslateSettings, ecds_name, translate
from controlplane.translate.selection import select_plugins
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot


class SnapshotBuilder:
    def __init__(self, settings: TranslateSettings, read_module: Callable[[str], bytes]) -> None:
        """`read_module(sha256)` gives a verified module's bytes, for the classes that get them inline."""
        self._settings = settings
        self._read_module = read_module
        self._sent: dict[ProxyClass, dict[str, PluginType]] = {}
        """Per ECDS-only class, every plugin it was sent, by ECDS name."""
        self._inline: dict[str, bytes] = {}
        """Module bytes by sha256, read once and kept while a module with that sha256 is ready."""

    def build(self, config: Config, modules: Mapping[ModuleKey, ModuleStatus], proxy: ProxyClass) -> Snapshot:
        """The snapshot of `proxy`'s class: its clusters, listeners and ECDS configs. `modules` is the status
        of every module the config needs; one missing is still being fetched, and the listeners that use
        it wait for its config while Envoy warms them."""
        inline: dict[str, bytes] = {}
        retired: dict[str, PluginType] = {}
        if proxy.standalone_ecds:
            plugins = select_plugins(config, proxy, self._settings.root_namespace)
            if self._settings.module_delivery == "remote":
                # Envoy fetches remote code only while a listener warms, and these listeners never warm again.
                inline = self._module_bytes((modules.get(p.module) for p in plugins), modules.values())
            sent = self._sent.setdefault(proxy, {})
            current = {ecds_name(p) for p in plugins}
            retired = {name: plugin_type for name, plugin_type in sent.items() if name not in current}
            sent.update({ecds_name(p): p.type for p in plugins})
        resources = translate(config, proxy, modules, self._settings, inline_modules=inline, retired=retired)
        return Snapshot.of(
            {CLUSTER: resources.clusters, LISTENER: resources.listeners, EXTENSION_CONFIG: resources.extension_configs}
        )

    def forget(self, proxy: ProxyClass) -> None:
        """Called when the last stream of the class goes (its last watch is cancelled), so that classes made
        up from arbitrary node labels cannot grow what is remembered."""
        self._sent.pop(proxy, None)

    def _module_bytes(self, wanted: Iterable[ModuleStatus | None], every: Iterable[ModuleStatus]) -> dict[str, bytes]:
        """The bytes of the wanted ready modules; those of modules no longer ready under any key are dropped."""
        wanted_shas = {s.sha256 for s in wanted if isinstance(s, ModuleReady)}
        in_use = {s.sha256 for s in every if isinstance(s, ModuleReady)}
        for sha256 in set(self._inline) - in_use:
            del self._inline[sha256]
        for sha256 in wanted_shas - set(self._inline):
            self._inline[sha256] = self._read_module(sha256)
        return {sha256: self._inline[sha256] for sha256 in wanted_shas}
