"""Starts the real components the tests talk to (the control plane, Envoy, httpbin) as processes on
loopback, and the small HTTP helpers the tests use to observe them."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client.parser import text_string_to_metric_families

from controlplane import files
from controlplane.bootstrap import EnvoyTls, envoy_bootstrap
from controlplane.cli import _parser as controlplane_parser
from controlplane.processes import Process, controlplane_command
from controlplane.render import message_as_dict
from controlplane.source.directory import FileState, LoadedDirectory, Served
from controlplane.source.documents import DocumentKey
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "fixtures" / "plugins"
RATELIMIT_WASM = PLUGINS / "ratelimit" / "plugin.wasm"
ORDER_MARKER_WASM = PLUGINS / "order-marker" / "plugin.wasm"
T = TypeVar("T")
ROUTER = "envoy.filters.http.router"
BOTH_PROTOCOLS = pytest.mark.parametrize("stack", ["sotw", "delta"], indirect=True)
UNPRIVILEGED = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--") if os.geteuid() == 0 else ()
"""Runs a command without the capabilities that let root read what file permissions forbid."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_on(hosts: list[str]) -> int:
    """A port free on every one of `hosts`, for replicas that listen on the same port at their own address."""
    while True:
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port


def serve_args(args: list[str]) -> argparse.Namespace:
    """`controlplane serve ARGS` as the server reads them (its defaults filled in), so that files that start
    it (Dockerfile, docker-compose, Kubernetes manifests) are checked against its real flags; an unknown
    flag exits as the command would."""
    return controlplane_parser().parse_args(["serve", *args])


def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Polls until `condition` returns something truthy and returns it; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}; last: {last!r}")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(
    port: int, path: str = "/get", headers: dict[str, str] | None = None, timeout: float = 5, host: str = "127.0.0.1"
) -> Response:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def burst(port: int, count: int) -> list[Response]:
    return [http_get(port) for _ in range(count)]


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


def start_httpbin(log_dir: Path) -> tuple[Process, int]:
    port = free_port()
    gunicorn = shutil.which("gunicorn") or "gunicorn"
    process = Process("httpbin", [gunicorn, "-b", f"127.0.0.1:{port}", "-w", "2", "httpbin:app"], log_dir)
    wait_for(lambda: http_get(port, "/status/200").status == 200, what="httpbin")
    return process, port


@dataclass
class ControlPlaneProcess:
    process: Process
    xds_port: int
    http_port: int
    """The module port."""
    admin_port: int
    """Health, readiness, metrics and the status views."""
    host: str = "127.0.0.1"
    """The loopback address it listens on, admin port included."""

    def get(self, path: str) -> Response:
        """`path` from the admin port."""
        return http_get(self.admin_port, path, host=self.host)

    def status(self, view: str = "config") -> Any:
        return self.get(f"/debug/{view}").json()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of `/metrics`, parsed by prometheus_client: (name, sorted labels) to value."""
        text = self.get("/metrics").body.decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def module(self, url: str) -> dict[str, Any]:
        """The one entry of the `/debug/config` modules list for `url` (as shown: redacted)."""
        [entry] = [m for m in self.status()["modules"] if m["url"] == url]
        return entry


def start_control_plane(
    processes: list[Process],
    config_dir: Path,
    log_dir: Path,
    *extra: str,
    ports: tuple[int, int] | tuple[int, int, int] | None = None,
    until: str = "/ready",
    host: str = "127.0.0.1",
    cache_dir: Path | None = None,
    command_prefix: tuple[str, ...] = (),
) -> ControlPlaneProcess:
    """`ports` (xDS, HTTP[, admin]) start it where an earlier one ran, as a restart does; `until` is the admin
    path that must answer 200 before this returns; `host` is the loopback address it listens on, admin port
    included (replicas each take their own, 127.0.0.2, 127.0.0.3..., with the same ports); `command_prefix`
    runs it through another program (such as one that drops privileges)."""
    xds_port, http_port, admin_port = (*ports, free_port())[:3] if ports else (free_port(), free_port(), free_port())
    process = Process(
        f"controlplane-{len(processes)}",
        [
            *command_prefix,
            *controlplane_command(
                "serve",
                "--config-dir",
                str(config_dir),
                "--xds-port",
                str(xds_port),
                "--http-port",
                str(http_port),
                "--admin-port",
                str(admin_port),
                "--cache-dir",
                str(cache_dir or log_dir / "cache"),
                "--host",
                host,
                "--admin-host",
                host,
                *extra,
            ),
        ],
        log_dir,
    )
    processes.append(process)
    control_plane = ControlPlaneProcess(process, xds_port, http_port, admin_port, host)
    wait_for(lambda: control_plane.get(until).status == 200, what=f"control plane {until}")
    return control_plane


@dataclass
class EnvoyProcess:
    process: Process
    admin_port: int

    def config_dump(self) -> dict[str, Any]:
        return http_get(self.admin_port, "/config_dump").json()

    def stats(self) -> dict[str, int]:
        text = http_get(self.admin_port, "/stats").body.decode()
        result = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                result[name] = int(value)
        return result

    def http_filters(self, listener: str) -> list[str]:
        """The HTTP filter names of a listener's connection manager, as Envoy holds them now."""
        for config in self.config_dump()["configs"]:
            for dynamic in config.get("dynamic_listeners", []):
                if dynamic["name"] != listener or "active_state" not in dynamic:
                    continue
                for chain in dynamic["active_state"]["listener"]["filter_chains"]:
                    for network_filter in chain["filters"]:
                        if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                            return [f["name"] for f in network_filter["typed_config"]["http_filters"]]
        return []

    def extension_configs(self) -> dict[str, dict[str, Any]]:
        """ECDS configs Envoy has accepted, by name."""
        result = {}
        for config in self.config_dump()["configs"]:
            for ecds in config.get("ecds_filters", []) + config.get("ecds_network_filters", []):
                typed = ecds["ecds_filter"]
                result[typed["name"]] = typed["typed_config"]
        return result


def config_reloads(stats: dict[str, int]) -> dict[str, int]:
    """Every counter that moves when Envoy applies a listener, cluster or filter config."""
    watched = (
        "listener_added",
        "listener_modified",
        "listener_removed",
        "cds.update_success",
        "lds.update_success",
        "config_reload",
        "update_rejected",
    )
    return {name: value for name, value in stats.items() if name.endswith(watched)}


def start_envoy(
    processes: list[Process],
    log_dir: Path,
    xds_port: int,
    node_id: str,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    delta: bool = False,
    tls: EnvoyTls | None = None,
) -> EnvoyProcess:
    bootstrap = envoy_bootstrap(
        node_id, namespace, labels or {}, "127.0.0.1", xds_port, free_port(), delta=delta, tls=tls
    )
    return run_envoy(processes, log_dir, node_id, message_as_dict(bootstrap))


def run_envoy(processes: list[Process], log_dir: Path, name: str, bootstrap: dict[str, Any]) -> EnvoyProcess:
    admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    path = log_dir / f"envoy-{name}.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    envoy = shutil.which("envoy") or "envoy"
    process = Process(
        f"envoy-{name}",
        [envoy, "-c", str(path), "--concurrency", "2", "--use-dynamic-base-id", "--log-level", "info"],
        log_dir,
    )
    processes.append(process)
    wait_for(lambda: http_get(admin_port, "/ready").status == 200, what=f"envoy {name} ready")
    return EnvoyProcess(process, admin_port)


def sidecar_yaml(
    name: str, listen_port: int, upstream_port: int, labels: dict[str, str] | None = None, namespace: str = "default"
) -> str:
    selector = ""
    if labels:
        selector = "  workloadSelector:\n    labels:\n" + "".join(f"      {k}: {v}\n" for k, v in labels.items())
    return f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {name}
  namespace: {namespace}
spec:
{selector}  ingress:
  - port:
      number: {listen_port}
      protocol: HTTP
      name: http
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:{upstream_port}
"""


def wasm_plugin_yaml(
    name: str,
    url: str,
    *,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    plugin_name: str = "",
    phase: str = "",
    priority: int | None = None,
    fail_strategy: str = "",
    config: dict[str, Any] | None = None,
    sha256: str = "",
) -> str:
    spec: dict[str, Any] = {"url": url}
    if sha256:
        spec["sha256"] = sha256
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    for key, value in (("pluginName", plugin_name), ("phase", phase), ("failStrategy", fail_strategy)):
        if value:
            spec[key] = value
    if priority is not None:
        spec["priority"] = priority
    if config is not None:
        spec["pluginConfig"] = config
    document = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return yaml.safe_dump(document, sort_keys=False)


def write_atomically(path: Path, text: str) -> None:
    """As editors and git save a file: written beside, then renamed over."""
    files.write_atomically(path, text.encode(), 0o644)


@dataclass
class Stack:
    config_dir: Path
    control_plane: ControlPlaneProcess
    envoy: EnvoyProcess
    port: int

    def write(self, name: str, text: str) -> Path:
        path = self.config_dir / name
        write_atomically(path, text)
        return path

    def listener_filters(self) -> list[str]:
        return self.envoy.http_filters(f"inbound|{self.port}")


def padded(module: bytes, size: int, seed: str) -> bytes:
    """`module` with a custom section that brings it to about `size` bytes; `seed` makes another sha256."""
    name = b"bench-padding"
    payload = (seed.encode() * (size // max(1, len(seed)) + 1))[: max(0, size - len(module))]
    body = _leb128(len(name)) + name + payload
    return module + b"\x00" + _leb128(len(body)) + body


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class Traffic:
    """Two threads sending requests on new connections while in a `with`: each response counted by its
    status, and a 200 by the value of `header` (set by the plugin under test)."""

    def __init__(self, port: int, header: str) -> None:
        self.port = port
        self.header = header
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = http_get(self.port, timeout=5)
            except (OSError, http.client.HTTPException):
                self.counts["connection error"] += 1
                continue
            marker = response.headers.get(self.header)
            if response.status == 200:
                self.counts[f"plugin {marker}" if marker else "WITHOUT THE PLUGIN"] += 1
            else:
                self.counts[str(response.status)] += 1

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


_MESSAGES = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    EXTENSION_CONFIG: extension_pb2.TypedExtensionConfig,
}


def resource_names(response: Any) -> list[str]:
    """The names of the resources an xDS response (state of the world or delta) carries, in its order."""
    names = []
    for item in response.resources:
        resource = item.resource if isinstance(response, discovery_pb2.DeltaDiscoveryResponse) else item
        message = _MESSAGES[response.type_url]()
        assert resource.Unpack(message)
        names.append(message.name)
    return names


def replicated_directory(template: LoadedDirectory, count: int) -> LoadedDirectory:
    """`count` files, each serving one plugin, made from a real loaded file."""
    [state] = template.files.values()
    [(key, served)] = template.served.items()
    by_path: dict[str, FileState] = {}
    by_key: dict[DocumentKey, Served] = {}
    for i in range(count):
        path = f"/config/plugin-{i}.yaml"
        new_key = dataclasses.replace(key, name=f"plugin-{i}")
        document = dataclasses.replace(state.documents[0], key=new_key)
        by_path[path] = dataclasses.replace(state, path=path, documents=(document,))
        by_key[new_key] = dataclasses.replace(served, path=path)
    return dataclasses.replace(template, files=by_path, served=by_key)
