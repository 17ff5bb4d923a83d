"""Which registry credential a pull uses: the plugin's pull Secret first, then the Docker config the
control plane was started with: its `credHelpers` entry for the registry, its `auths`, its `credsStore`,
in that order, as the Docker CLI picks them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controlplane.docker_config import DockerConfigError, parse_docker_config, registry_host
from controlplane.model import PullSecret, RegistryCredential

log = logging.getLogger(__name__)

HELPER_TIMEOUT_SECONDS = 30.0
IDENTITY_TOKEN_USER = "<token>"
"""What a helper answers as user name for an OAuth identity token, which is not a basic-auth password."""


@dataclass(frozen=True)
class CredentialHelpers:
    """The `docker-credential-<name>` programs a Docker config names, asked at each pull (their tokens
    expire: ECR's after twelve hours)."""

    by_registry: tuple[tuple[str, str], ...] = ()
    """`credHelpers`: registry host to helper name."""
    default: str = ""
    """`credsStore`: the helper for every other registry."""

    def specific(self, registry: str) -> str:
        return dict(self.by_registry).get(registry_host(registry), "")


def docker_config_path(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """`--docker-config PATH` (a config.json, or a folder holding one), else `$DOCKER_CONFIG/config.json`."""
    path = flag or environ.get("DOCKER_CONFIG")
    if not path:
        return None
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def load_docker_config(path: str) -> tuple[tuple[RegistryCredential, ...], CredentialHelpers]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise DockerConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_docker_config(text), _helpers(json.loads(text))
    except DockerConfigError as exc:
        raise DockerConfigError(f"{path}: {exc}") from None


def _helpers(data: dict[str, object]) -> CredentialHelpers:
    by_registry = data.get("credHelpers", {})
    default = data.get("credsStore", "")
    if not isinstance(by_registry, dict) or not all(isinstance(v, str) for v in by_registry.values()):
        raise DockerConfigError("credHelpers: not a JSON object of helper names")
    if not isinstance(default, str):
        raise DockerConfigError("credsStore: not a helper name")
    return CredentialHelpers(tuple(sorted((registry_host(k), v) for k, v in by_registry.items())), default)


def secret_credentials(secrets: Iterable[PullSecret], reference: str) -> tuple[RegistryCredential, ...]:
    """The credentials of the Secret a ModuleKey names as `namespace/name` (none when it is missing)."""
    for secret in secrets:
        if f"{secret.namespace}/{secret.name}" == reference:
            return secret.credentials
    return ()


def credential_for(
    registry: str,
    secret: Iterable[RegistryCredential],
    docker_config: Iterable[RegistryCredential] = (),
    helpers: CredentialHelpers = CredentialHelpers(),
) -> RegistryCredential | None:
    """Blocking (a helper is a program): call it from a worker thread."""
    host = registry_host(registry)
    found = next((c for c in secret if c.registry == host), None)
    if found is None and helpers.specific(host):
        found = helper_credential(helpers.specific(host), host)
    if found is None:
        found = next((c for c in docker_config if c.registry == host), None)
    if found is None and helpers.default:
        found = helper_credential(helpers.default, host)
    return found


def helper_credential(helper: str, registry: str) -> RegistryCredential | None:
    """Asks `docker-credential-<helper> get` for the registry's login; None when it has none."""
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [program, "get"], input=registry, capture_output=True, text=True, timeout=HELPER_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential helper %s for %s did not run: %s", program, registry, type(exc).__name__)
        return None
    if result.returncode != 0:
        # Helpers answer "credentials not found" this way; their output may hold anything, so it is not logged.
        log.info("credential helper %s has no login for %s", program, registry)
        return None
    try:
        answer = json.loads(result.stdout)
        username, secret = str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        log.warning("credential helper %s gave no Username and Secret for %s", program, registry)
        return None
    if username == IDENTITY_TOKEN_USER:
        log.warning("credential helper %s gave an identity token for %s, which is not supported", program, registry)
        return None
    return RegistryCredential(registry, username, secret)
