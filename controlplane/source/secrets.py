"""Registry credentials as Kubernetes keeps them: `kubernetes.io/dockerconfigjson` Secret documents, whose
Docker `config.json` `controlplane.docker_config` reads. No message here ever quotes a credential."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from controlplane.docker_config import DockerConfigError, parse_docker_config
from controlplane.errors import ConfigError
from controlplane.model import Config, PullSecret, SourceRef
from controlplane.source.schema import Problem
from controlplane.source.yaml_documents import FieldPath

SECRET_API_VERSIONS = frozenset({"v1"})
DOCKER_CONFIG_JSON_TYPE = "kubernetes.io/dockerconfigjson"
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"


def read_pull_secret(
    data: Mapping[str, Any], namespace: str, name: str, source: SourceRef
) -> tuple[PullSecret | None, list[Problem]]:
    """A dockerconfigjson Secret document's body (apiVersion, kind, type and metadata checked by the caller)."""
    problems: list[Problem] = []
    text, at = _docker_config_text(data, problems)
    if text is None:
        return None, problems
    try:
        credentials = parse_docker_config(text)
    except DockerConfigError as exc:
        problems.append((at, f"invalid Docker config: {exc}"))
        return None, problems
    return PullSecret(namespace, name, credentials, source), problems


def _docker_config_text(data: Mapping[str, Any], problems: list[Problem]) -> tuple[str | None, FieldPath]:
    """`stringData` wins over `data`, as the Kubernetes API server merges them."""
    string_data = data.get("stringData")
    if isinstance(string_data, dict) and DOCKER_CONFIG_JSON_KEY in string_data:
        at: FieldPath = ("stringData", DOCKER_CONFIG_JSON_KEY)
        value = string_data[DOCKER_CONFIG_JSON_KEY]
        if not isinstance(value, str):
            problems.append((at, "must be a string"))
            return None, at
        return value, at
    encoded = data.get("data")
    at = ("data", DOCKER_CONFIG_JSON_KEY)
    if not isinstance(encoded, dict) or DOCKER_CONFIG_JSON_KEY not in encoded:
        problems.append((("data",), f"required: {DOCKER_CONFIG_JSON_KEY} (or stringData.{DOCKER_CONFIG_JSON_KEY})"))
        return None, at
    try:
        return base64.b64decode(str(encoded[DOCKER_CONFIG_JSON_KEY]), validate=True).decode("utf-8"), at
    except (binascii.Error, UnicodeDecodeError):
        problems.append((at, "not base64-encoded UTF-8"))
        return None, at


def missing_pull_secrets(config: Config) -> list[ConfigError]:
    """A plugin whose imagePullSecret names no Secret of its namespace: a warning, not an error, as the
    Secret is often kept out of git (and the login given with --docker-config); the module is fetched with
    the credentials there are, and a registry that needs others fails it by its failStrategy."""
    known = {(s.namespace, s.name) for s in config.secrets}
    return [
        ConfigError(
            plugin.source.path,
            plugin.image_pull_secret_line or plugin.source.line,
            "spec.imagePullSecret",
            f"no {DOCKER_CONFIG_JSON_TYPE} Secret {plugin.image_pull_secret!r} in namespace {plugin.namespace!r}",
        )
        for plugin in config.plugins
        if plugin.image_pull_secret and (plugin.namespace, plugin.image_pull_secret) not in known
    ]
