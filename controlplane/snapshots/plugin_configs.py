"""Each plugin's ECDS config, translated and serialized once per plugin and module state, and shared by
every proxy class that gets it: a module that travels inside its config is held once, however many label
sets select it, and a change rebuilds each config once, not once per class."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import extension_pb2
from google.protobuf.message import Message

from controlplane.model import ModuleKey, ModuleStatus, WasmPlugin
from controlplane.translate.resources import ModuleCode, TranslateSettings, extension_config_for
from controlplane.xds.snapshot import Resource, make_resource, pack

_Key = tuple[WasmPlugin, "ModuleStatus | None"]


class PluginConfigs:
    def __init__(self, settings: TranslateSettings, code: ModuleCode) -> None:
        self._settings = settings
        self._code = code
        self._configs: dict[_Key, extension_pb2.TypedExtensionConfig | None] = {}
        self._resources: dict[int, tuple[Message, Resource]] = {}
        """By the id of a config held in `_configs`, which keeps that id from being reused."""

    def config(self, plugin: WasmPlugin, status: ModuleStatus | None) -> extension_pb2.TypedExtensionConfig | None:
        """As `extension_config_for`, the same message for the same plugin and module state."""
        key = (plugin, status)
        if key not in self._configs:
            config = extension_config_for(plugin, status, self._settings, self._code)
            self._configs[key] = config
            if config is not None:
                self._resources[id(config)] = (config, pack(config))
        return self._configs[key]

    def resource(self, message: Message) -> Resource:
        """The snapshot resource of `message`: serialized once for a config of ours."""
        held = self._resources.get(id(message))
        if held is not None and held[0] is message:
            return held[1]
        return make_resource(message)

    def retain(self, plugins: Iterable[WasmPlugin], statuses: Mapping[ModuleKey, ModuleStatus]) -> None:
        """Forgets the configs of plugins and module states that are gone (and with them their bytes)."""
        current = {(p, statuses.get(p.module)) for p in plugins}
        for key in set(self._configs) - current:
            config = self._configs.pop(key)
            if config is not None:
                self._resources.pop(id(config), None)
