"""Which registry credential a pull uses: the plugin's pull Secret first, then the Docker config the
control plane was started with."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from controlplane.model import PullSecret, RegistryCredential
from controlplane.source.secrets import DockerConfigError, parse_docker_config, registry_host


def docker_config_path(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """`--docker-config PATH` (a config.json, or a folder holding one), else `$DOCKER_CONFIG/config.json`."""
    path = flag or environ.get("DOCKER_CONFIG")
    if not path:
        return None
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def load_docker_config(path: str) -> tuple[RegistryCredential, ...]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise DockerConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_docker_config(text)
    except DockerConfigError as exc:
        raise DockerConfigError(f"{path}: {exc}") from None


def secret_credentials(secrets: Iterable[PullSecret], reference: str) -> tuple[RegistryCredential, ...]:
    """The credentials of the Secret a ModuleKey names as `namespace/name` (none when it is missing)."""
    for secret in secrets:
        if f"{secret.namespace}/{secret.name}" == reference:
            return secret.credentials
    return ()


def credential_for(registry: str, candidates: Iterable[RegistryCredential]) -> RegistryCredential | None:
    host = registry_host(registry)
    return next((c for c in candidates if c.registry == host), None)
