"""What `controlplane serve` is told: where the config and the cache are, where to listen, and the settings
of each stage of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.modules.resolver import ResolverSettings
from controlplane.modules.signatures import SignaturePolicy
from controlplane.source.settle import SettleSettings
from controlplane.translate.resources import TranslateSettings


@dataclass(frozen=True)
class ServeSettings:
    config_dirs: tuple[str, ...]
    cache_dir: str
    host: str = "127.0.0.1"
    xds_port: int = 18000
    http_port: int = 18001
    translate: TranslateSettings = TranslateSettings()
    modules: ResolverSettings = ResolverSettings()
    signatures: SignaturePolicy = SignaturePolicy()
    settle: SettleSettings = SettleSettings()
    resync_seconds: float = 30.0
    startup_fetch_seconds: float = 30.0
