"""Registry logins as a config directory carries them: `kubernetes.io/dockerconfigjson` Secrets, read with
`path:line: field: reason` errors that never quote a credential, and the Docker config of `--docker-config`."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from controlplane.model import RegistryCredential
from controlplane.modules.credentials import docker_config_path, load_docker_config
from controlplane.processes import controlplane_command
from controlplane.source.directory import load_directory
from tests.support import wasm_plugin_yaml

PASSWORD = "pw-91c2-never-logged"
DOCKER_CONFIG = json.dumps(
    {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(f"hub-user:{PASSWORD}".encode()).decode()},
            "registry.example.com:5000": {"username": "robot", "password": PASSWORD},
            "ghcr.io": {"identitytoken": "skipped: needs a token exchange"},
        },
        "credHelpers": {"ecr.example.com": "ecr-login"},
    }
)


def secret(name: str, body: str, namespace: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"type: kubernetes.io/dockerconfigjson\n{body}"
    )


def test_secrets_from_data_and_string_data_become_credentials(tmp_path: Path) -> None:
    encoded = base64.b64encode(DOCKER_CONFIG.encode()).decode()
    (tmp_path / "secrets.yaml").write_text(
        secret("from-data", f"data:\n  .dockerconfigjson: {encoded}\n")
        + "---\n"
        + secret("from-string-data", f"stringData:\n  .dockerconfigjson: '{DOCKER_CONFIG}'\n", namespace="apps")
    )
    loaded = load_directory([str(tmp_path)])
    assert loaded.errors == ()
    expected = (
        RegistryCredential("docker.io", "hub-user", PASSWORD),
        RegistryCredential("registry.example.com:5000", "robot", PASSWORD),
    )
    assert [(s.namespace, s.name, s.credentials) for s in loaded.config.secrets] == [
        ("apps", "from-string-data", expected),
        ("default", "from-data", expected),
    ]
    assert PASSWORD not in repr(loaded.config)


def test_a_broken_secret_is_reported_at_its_line_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    bad_auth = json.dumps({"auths": {"r.io": {"auth": base64.b64encode(PASSWORD.encode()).decode()}}})
    path.write_text(
        secret("not-base64", "data:\n  .dockerconfigjson: '%%%'\n")
        + "---\n"
        + secret("not-json", "stringData:\n  .dockerconfigjson: '{nope'\n")
        + "---\n"
        + secret("no-colon", f"stringData:\n  .dockerconfigjson: '{bad_auth}'\n")
        + "---\n"
        + secret("empty", "")
        + "---\n"
        + "apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\ndata: {}\n"
    )
    errors = [str(e) for e in load_directory([str(tmp_path)]).errors]
    lines = path.read_text().splitlines()
    key_lines = [number for number, line in enumerate(lines, 1) if ".dockerconfigjson:" in line]
    empty_line = lines.index("  name: empty") - 2  # the document's first line, where data belongs
    assert errors == [
        f"{path}:{key_lines[0]}: data..dockerconfigjson: not base64-encoded UTF-8",
        f"{path}:{key_lines[1]}: stringData..dockerconfigjson: invalid Docker config: not JSON (line 1: "
        "Expecting property name enclosed in double quotes)",
        f"{path}:{key_lines[2]}: stringData..dockerconfigjson: invalid Docker config: auths.r.io.auth: not base64 of user:password",
        f"{path}:{empty_line}: data: required: .dockerconfigjson (or stringData..dockerconfigjson)",
    ]
    assert not any(PASSWORD in e for e in errors)


@pytest.mark.integration
def test_a_plugin_naming_a_missing_secret_is_a_warning_at_its_line(tmp_path: Path) -> None:
    """Istio's own examples name a Secret kept out of git: they must pass `validate` unchanged."""
    plugin = wasm_plugin_yaml("p", "oci://r.io/p:1").replace("spec:\n", "spec:\n  imagePullSecret: login\n")
    (tmp_path / "plugin.yaml").write_text(plugin)
    (tmp_path / "other-namespace.yaml").write_text(
        secret("login", f"stringData:\n  .dockerconfigjson: '{DOCKER_CONFIG}'\n", namespace="apps")
    )
    result = subprocess.run(controlplane_command("validate", str(tmp_path)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    line = plugin.splitlines().index("  imagePullSecret: login") + 1
    assert (
        f"warning: {tmp_path / 'plugin.yaml'}:{line}: spec.imagePullSecret: no kubernetes.io/dockerconfigjson "
        "Secret 'login' in namespace 'default'" in result.stderr
    )
    (tmp_path / "same-namespace.yaml").write_text(
        secret("login", f"stringData:\n  .dockerconfigjson: '{DOCKER_CONFIG}'\n")
    )
    result = subprocess.run(controlplane_command("validate", str(tmp_path)), capture_output=True, text=True)
    assert result.returncode == 0 and "imagePullSecret" not in result.stderr, result.stderr


def test_the_docker_config_comes_from_the_flag_else_docker_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(DOCKER_CONFIG)
    assert docker_config_path(str(tmp_path), {}) == str(tmp_path / "config.json")
    assert docker_config_path(None, {"DOCKER_CONFIG": str(tmp_path)}) == str(tmp_path / "config.json")
    assert docker_config_path(None, {}) is None
    assert [c.registry for c in load_docker_config(str(tmp_path / "config.json"))[0]] == [
        "docker.io",
        "registry.example.com:5000",
    ]


@pytest.mark.integration
def test_serve_refuses_an_unreadable_docker_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    result = subprocess.run(
        controlplane_command(
            "serve",
            "--config-dir",
            str(tmp_path),
            "--docker-config",
            str(tmp_path / "config.json"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--docker-config" in result.stderr and "not JSON" in result.stderr
