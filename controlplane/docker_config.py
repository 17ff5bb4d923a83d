"""The Docker `config.json` registry logins, as the Docker CLI and Kubernetes pull Secrets write them: read
by the loader (a Secret's `.dockerconfigjson`) and by the module fetchers (`--docker-config`). No message
here ever quotes a credential."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from controlplane.model import RegistryCredential

# Docker Hub goes by several names in config files; images call it docker.io.
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


class DockerConfigError(ValueError):
    """A Docker config that cannot be used; the message names the problem, never a credential."""


def registry_host(key: str) -> str:
    """`https://index.docker.io/v1/` or `ghcr.io` as written in `auths`, to `host[:port]` as images name it."""
    host = key.partition("://")[2] if "://" in key else key
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def parse_docker_config(text: str) -> tuple[RegistryCredential, ...]:
    """The `auths` of a Docker config.json: per registry, `auth` (base64 `user:password`) or `username` and
    `password`. Entries with neither (credential helpers, identity tokens) are skipped."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DockerConfigError(f"not JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise DockerConfigError("not a JSON object")
    auths = data.get("auths", {})
    if not isinstance(auths, dict):
        raise DockerConfigError("auths: not a JSON object")
    credentials = []
    for key, entry in sorted(auths.items()):
        if not isinstance(entry, dict):
            raise DockerConfigError(f"auths.{key}: not a JSON object")
        credential = _credential(key, entry)
        if credential is not None:
            credentials.append(credential)
    return tuple(credentials)


def _credential(key: str, entry: Mapping[str, Any]) -> RegistryCredential | None:
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise DockerConfigError(f"auths.{key}.auth: not base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise DockerConfigError(f"auths.{key}.auth: not base64 of user:password")
        return RegistryCredential(registry_host(key), username, password)
    if entry.get("username") is not None and entry.get("password") is not None:
        return RegistryCredential(registry_host(key), str(entry["username"]), str(entry["password"]))
    return None
