"""When a module is pulled again: Istio's imagePullPolicy, per module key. Pure functions of the config."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from controlplane.image_reference import InvalidReference, parse_reference
from controlplane.model import (
    Config,
    FailStrategy,
    ModuleKey,
    PullPolicy,
    RegistryCredential,
    SourceRef,
    WasmPlugin,
)
from controlplane.modules.credentials import secret_credentials
from controlplane.modules.fetch import is_http, is_local


@dataclass(frozen=True)
class ModuleRequest:
    key: ModuleKey
    always: bool
    """Pulled again when `revision` changes and every repull interval; else only while it is not cached."""
    revision: str
    """Changes whenever a plugin using the module changes, or the credentials it is pulled with."""
    credentials: tuple[RegistryCredential, ...] = field(default=(), repr=False)


def is_pinned(key: ModuleKey) -> bool:
    """Content that cannot change under this key: pulling it again could only give the same bytes."""
    return bool(key.sha256) or "@sha256:" in key.url


def pulls_always(plugin: WasmPlugin) -> bool:
    """`Always`, or unspecified on an OCI image tagged (or defaulting to) `latest`, as Istio decides."""
    if plugin.image_pull_policy != PullPolicy.UNSPECIFIED_POLICY:
        return plugin.image_pull_policy == PullPolicy.ALWAYS
    if is_local(plugin.url) or is_http(plugin.url):
        return False
    try:
        return parse_reference(plugin.url).tag == "latest"
    except InvalidReference:
        return False


def module_requests(config: Config) -> list[ModuleRequest]:
    plugins_by_key: dict[ModuleKey, list[WasmPlugin]] = {}
    for plugin in config.plugins:
        plugins_by_key.setdefault(plugin.module, []).append(plugin)
    requests = []
    for key, plugins in plugins_by_key.items():
        credentials = secret_credentials(config.secrets, key.pull_secret) if key.pull_secret else ()
        always = not is_pinned(key) and any(pulls_always(p) for p in plugins)
        requests.append(ModuleRequest(key, always, _revision(plugins, credentials), credentials))
    return requests


def start_waits_for(config: Config) -> frozenset[ModuleKey]:
    """The modules a starting server waits for before it answers any proxy. A module only FAIL_OPEN plugins
    use holds nothing up: they serve their allow-all stand-in until it arrives."""
    return frozenset(p.module for p in config.plugins if p.fail_strategy != FailStrategy.FAIL_OPEN)


def _revision(plugins: Iterable[WasmPlugin], credentials: tuple[RegistryCredential, ...]) -> str:
    # Where a document sits in its file is no change to the plugin.
    specs = sorted(repr(replace(p, source=SourceRef("", 0))) for p in plugins)
    secrets = sorted(f"{c.registry}\0{c.username}\0{c.password}" for c in credentials)
    return hashlib.sha256("\n".join(specs + secrets).encode()).hexdigest()
