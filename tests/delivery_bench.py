"""How each way of delivering a module behaves while a 10 MB module is upgraded under load, with a real
Envoy 1.40: `python -m tests.delivery_bench [option ...] [--size-mb 10] [--protocol sotw|delta]`.

Options:
- `today`: remote code, one ECDS name per plugin, the listener's metadata names its modules' sha256s.
- `versioned`: remote code, one ECDS name per plugin and module version, so a new module comes with a
  listener that names the new config; the old listener serves until the new one is warm.
- `inline`: the module inside the ECDS config (`local.inline_bytes`); the listener never changes.
- `local`: `local.filename` in a folder the proxy shares with the control plane.

Each run: an xDS server (this project's translation, snapshot and ADS code), its module HTTP server, an
Envoy in front of httpbin with two FAIL_CLOSE plugins of `--size-mb` each (order-marker and ratelimit,
padded with a custom section), a keep-alive connection opened before the upgrade, and two threads sending
requests on new connections while the order-marker plugin moves to a new module (and config name v2).
Prints per option: requests that got through without the plugin (200 without its header), 5xx, 403, what
the xDS stream and module server sent for the upgrade, Envoy's listener and drain stats, whether the
keep-alive connection survived, Envoy's RSS and this process's RSS growth (the control plane's side)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.core.v3 import base_pb2, extension_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from controlplane.app import ControlPlane, ServeSettings
from controlplane.bootstrap import envoy_bootstrap
from controlplane.http_server import HttpServer
from controlplane.model import Config, ModuleReady, ModuleStatus, ProxyClass
from controlplane.modules.store import ModuleStore
from controlplane.render import message_as_dict
from controlplane.snapshots.plugin_configs import PluginConfigs
from controlplane.source.directory import load_directory
from controlplane.translate.resources import ProxyResources, TranslateSettings, endpoint_cluster, translate
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import Callbacks, DiscoveryServer
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot
from controlplane.xds.stream import Response
from tests.support import (
    ORDER_MARKER_WASM,
    RATELIMIT_WASM,
    Process,
    Traffic,
    free_port,
    http_get,
    padded,
    sidecar_yaml,
    start_httpbin,
    wait_for,
    wasm_plugin_yaml,
)

OPTIONS = ("today", "versioned", "inline", "local")
PROXY = ProxyClass("default", (("app", "bench"),))
MODULE_CLUSTER = "wasm-modules"
MIB = 1024 * 1024
MARKER_HEADER = "x-plugin-order"


def rss_kib(pid: int | str = "self") -> int:
    if pid == "self":
        # Freed buffers (building and sending 10 MiB messages leaves many) back to the system first, so
        # that what remains is what is held.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class ByteCount:
    """The bytes of every xDS response sent, as the server's `on_response` callback."""

    def __init__(self) -> None:
        self.bytes_sent = 0

    def __call__(self, connection: Any, response: Response) -> None:
        self.bytes_sent += len(response.encoded)


class CountingHttp(HttpServer):
    module_bytes = 0

    def _send_module(self, request: Any, sha256: str) -> None:
        with contextlib.suppress(OSError):
            CountingHttp.module_bytes += self._store.path(sha256).stat().st_size
        super()._send_module(request, sha256)


def versioned(resources: ProxyResources, statuses: dict[str, str]) -> ProxyResources:
    """Option `versioned`: each ECDS name carries its module's sha256, in the listener and the config."""
    renamed = {name: f"{name}@{sha[:16]}" for name, sha in statuses.items()}
    configs = []
    for config in resources.extension_configs:
        copy = type(config)()
        copy.CopyFrom(config)
        copy.name = renamed.get(config.name, config.name)
        configs.append(copy)
    listeners = []
    for listener in resources.listeners:
        copy = listener_pb2.Listener()
        copy.CopyFrom(listener)
        copy.ClearField("metadata")
        for chain in copy.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name != "envoy.filters.network.http_connection_manager":
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                for http_filter in hcm.http_filters:
                    http_filter.name = renamed.get(http_filter.name, http_filter.name)
                network_filter.typed_config.Pack(hcm, deterministic=True)
        listeners.append(copy)
    return ProxyResources(resources.clusters, tuple(listeners), tuple(configs))


def remote_code(resources: ProxyResources, http_port: int, mark_listeners: bool) -> ProxyResources:
    """The configs with `remote` code from the module server, as the control plane sent them before
    modules went inline, and the cluster for it. `mark_listeners`: each listener's metadata names its
    modules' sha256s, so that a new module comes with a listener update (Envoy fetches remote code only
    while a listener warms)."""
    configs = []
    shas = []
    for config in resources.extension_configs:
        copy = extension_pb2.TypedExtensionConfig()
        copy.CopyFrom(config)
        wasm = http_wasm_pb2.Wasm()
        if copy.typed_config.Unpack(wasm):
            sha = wasm.config.vm_config.vm_id
            shas.append(sha)
            wasm.config.vm_config.code.CopyFrom(
                base_pb2.AsyncDataSource(
                    remote=base_pb2.RemoteDataSource(
                        http_uri=http_uri_pb2.HttpUri(
                            uri=f"http://127.0.0.1:{http_port}/modules/{sha}.wasm",
                            cluster=MODULE_CLUSTER,
                            timeout=duration_pb2.Duration(seconds=30),
                        ),
                        sha256=sha,
                        retry_policy=base_pb2.RetryPolicy(num_retries=wrappers_pb2.UInt32Value(value=10)),
                    )
                )
            )
            copy.typed_config.Pack(wasm, deterministic=True)
        configs.append(copy)
    listeners = []
    for listener in resources.listeners:
        marked = listener_pb2.Listener()
        marked.CopyFrom(listener)
        if mark_listeners:
            marked.metadata.filter_metadata["wasm-controlplane"].update({"modules": sorted(shas)})
        listeners.append(marked)
    cluster = endpoint_cluster(MODULE_CLUSTER, "127.0.0.1", http_port)
    return ProxyResources((cluster, *resources.clusters), tuple(listeners), tuple(configs))


@dataclass
class Plane:
    """The xDS and module servers, on an event loop in a thread of this process."""

    loop: asyncio.AbstractEventLoop
    cache: SnapshotCache[str]
    xds: ByteCount
    xds_port: int
    http_port: int

    def set(self, snapshot: Snapshot) -> None:
        done = threading.Event()

        def apply() -> None:
            self.cache.set("bench", snapshot)
            done.set()

        self.loop.call_soon_threadsafe(apply)
        done.wait(10)


@contextlib.contextmanager
def plane(store: ModuleStore) -> Iterator[Plane]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        cache: SnapshotCache[str] = SnapshotCache()
        ready = asyncio.Event()
        ready.set()
        counted = ByteCount()
        xds = DiscoveryServer(cache, lambda node, standalone: "bench", ready, Callbacks(on_response=counted))
        server = grpc.aio.server()
        xds.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        http = CountingHttp("127.0.0.1", 0, store, loop, lambda: True, {})
        http.start()
        holder.update(cache=cache, xds=counted, port=port, http=http, server=server, stop=asyncio.Event())
        started.set()
        await holder["stop"].wait()
        await server.stop(grace=0.5)
        http.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(30)
    try:
        yield Plane(loop, holder["cache"], holder["xds"], holder["port"], holder["http"].port)
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def run_option(option: str, size: int, protocol: str, work: Path, httpbin_port: int) -> dict[str, Any]:
    store = ModuleStore(work / "cache", keep_in_memory=option == "inline")
    modules = {
        "marker-v1": padded(ORDER_MARKER_WASM.read_bytes(), size, "v1"),
        "marker-v2": padded(ORDER_MARKER_WASM.read_bytes(), size, "v2"),
        "ratelimit": padded(RATELIMIT_WASM.read_bytes(), size, "rl"),
    }
    files = {}
    for name, content in modules.items():
        files[name] = work / f"{name}.wasm"
        files[name].write_bytes(content)
    listen_port = free_port()
    config_dir = work / "config"
    config_dir.mkdir()
    (config_dir / "sidecar.yaml").write_text(sidecar_yaml("bench", listen_port, httpbin_port, {"app": "bench"}))
    rate = wasm_plugin_yaml(
        "ratelimit", f"file://{files['ratelimit']}", plugin_name="ratelimit", config={"requests_per_second": 100000}
    )
    (config_dir / "ratelimit.yaml").write_text(rate)

    def config_for(version: str) -> Config:
        marker = wasm_plugin_yaml(
            "marker", f"file://{files['marker-' + version]}", plugin_name="marker", config={"name": version}
        )
        (config_dir / "marker.yaml").write_text(marker)
        return load_directory([str(config_dir)]).config

    baseline_rss = rss_kib()
    with plane(store) as server:
        settings = TranslateSettings(
            module_delivery="inline" if option == "inline" else "local", local_module_dir=str(store.root)
        )

        configs = PluginConfigs(settings, store.read)

        def snapshot(config: Config) -> Snapshot:
            """As the server builds it: each plugin's config made once, shared by the proxy classes."""
            statuses: dict[Any, ModuleStatus] = {}
            shas: dict[str, str] = {}
            for plugin in config.plugins:
                content = Path(plugin.url[len("file://") :]).read_bytes()
                sha = store.put(content)
                statuses[plugin.module] = ModuleReady(sha, len(content))
                shas[f"extensions.istio.io/wasmplugin/{plugin.qualified_name}"] = sha
            configs.retain(config.plugins, statuses)
            store.keep_only(shas.values())
            resources = translate(config, PROXY, statuses, settings, extension_config=configs.config)
            if option in ("today", "versioned"):
                resources = remote_code(resources, server.http_port, mark_listeners=option == "today")
            if option == "versioned":
                resources = versioned(resources, shas)
            return Snapshot.of(
                {
                    CLUSTER: resources.clusters,
                    LISTENER: resources.listeners,
                    EXTENSION_CONFIG: resources.extension_configs,
                },
                make=configs.resource,
            )

        server.set(snapshot(config_for("v1")))
        bootstrap = message_as_dict(
            envoy_bootstrap(
                "bench-1",
                "default",
                {"app": "bench"},
                "127.0.0.1",
                server.xds_port,
                free_port(),
                delta=protocol == "delta",
            )
        )
        admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
        (work / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
        envoy_args = [shutil.which("envoy") or "envoy", "-c", str(work / "envoy.yaml"), "--concurrency", "2"]
        envoy_args += ["--use-dynamic-base-id", "--drain-time-s", "2", "--drain-strategy", "immediate"]
        envoy = Process(f"envoy-{option}", envoy_args, work)
        try:
            wait_for(lambda: http_get(listen_port).headers.get(MARKER_HEADER) == "v1", 60, what="v1 running")
            keep_alive = http.client.HTTPConnection("127.0.0.1", listen_port, timeout=5)
            keep_alive.request("GET", "/get")
            keep_alive.getresponse().read()
            stats_before = envoy_stats(admin)
            sent_before, served_before = server.xds.bytes_sent, CountingHttp.module_bytes
            with Traffic(listen_port, MARKER_HEADER) as load:
                time.sleep(1)
                started = time.monotonic()
                server.set(snapshot(config_for("v2")))
                upgraded = wait_for(
                    lambda: load.counts["plugin v2"] > 20 and http_get(listen_port).headers.get(MARKER_HEADER) == "v2",
                    60,
                    what="v2 running",
                )
                took = time.monotonic() - started
                time.sleep(3)  # past the drain time: a drained listener's connections are closed by now
            assert upgraded
            stats = envoy_stats(admin)
            survived = keep_alive_survives(keep_alive)
            return {
                "option": option,
                "protocol": protocol,
                "requests": dict(sorted(load.counts.items())),
                "upgrade_seconds": round(took, 2),
                "xds_bytes": server.xds.bytes_sent - sent_before,
                "module_http_bytes": CountingHttp.module_bytes - served_before,
                "listener_modified": stats.get("listener_manager.listener_modified", 0)
                - stats_before.get("listener_manager.listener_modified", 0),
                "drain_closes": sum(v for k, v in stats.items() if k.endswith("downstream_cx_drain_close"))
                - sum(v for k, v in stats_before.items() if k.endswith("downstream_cx_drain_close")),
                "keep_alive_survived": survived,
                "envoy_rss_mib": round(rss_kib(envoy.popen.pid) / 1024),
                "control_plane_rss_growth_mib": round((rss_kib() - baseline_rss) / 1024),
            }
        finally:
            envoy.stop()


def label_sets_memory(label_sets: int, size: int, work: Path) -> dict[str, Any]:
    """The control plane's memory for proxies of `label_sets` label sets on the extension-config service
    alone, all selected by one plugin whose module is `size` bytes: in process, without Envoy."""
    config = work / "config"
    config.mkdir()
    module = work / "module.wasm"
    module.write_bytes(padded(RATELIMIT_WASM.read_bytes(), size, "shared"))
    (config / "plugin.yaml").write_text(wasm_plugin_yaml("limit", f"file://{module}", plugin_name="limit"))

    async def measure() -> dict[str, Any]:
        plane = ControlPlane(ServeSettings(config_dirs=(str(config),), cache_dir=str(work / "cache")))
        await plane.reload()
        await plane.modules.settled()
        plane.snapshots.build(
            plane.loaded.config, plane.modules.statuses, ProxyClass("default", (), standalone_ecds=True)
        )
        before = rss_kib()
        for index in range(label_sets):  # as streams of that many label sets would
            plane.cache.watch(ProxyClass("default", (("pod", f"p{index}"),), standalone_ecds=True), lambda: None)
        return {
            "label_sets": label_sets,
            "module_mib": round(size / MIB, 1),
            "control_plane_rss_growth_mib": round((rss_kib() - before) / 1024),
        }

    return asyncio.run(measure())


def envoy_stats(admin_port: int) -> dict[str, int]:
    result = {}
    for line in http_get(admin_port, "/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            result[name] = int(value)
    return result


def keep_alive_survives(connection: http.client.HTTPConnection) -> bool:
    try:
        connection.request("GET", "/get")
        response = connection.getresponse()
        response.read()
        return response.status == 200 and response.getheader("connection", "").lower() != "close"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("options", nargs="*", metavar="OPTION", help=f"any of {', '.join(OPTIONS)} (default: all)")
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--protocol", choices=["sotw", "delta"], default="delta")
    parser.add_argument(
        "--label-sets", type=int, help="instead: the memory for ECDS-only proxies of this many label sets"
    )
    args = parser.parse_args()
    if args.label_sets:
        with tempfile.TemporaryDirectory() as tmp:
            result = label_sets_memory(args.label_sets, int(args.size_mb * MIB), Path(tmp))
        print(yaml.safe_dump(result, sort_keys=False), flush=True)
        return
    options = args.options or list(OPTIONS)
    if unknown := set(options) - set(OPTIONS):
        parser.error(f"unknown option {', '.join(sorted(unknown))}; choose from {', '.join(OPTIONS)}")
    if len(options) > 1:
        # One process per option, so that each one's memory figure is its own.
        for option in options:
            flags = ["--size-mb", str(args.size_mb), "--protocol", args.protocol]
            subprocess.run([sys.executable, "-m", "tests.delivery_bench", option, *flags], check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        httpbin, httpbin_port = start_httpbin(Path(tmp))
        try:
            work = Path(tmp) / options[0]
            work.mkdir()
            result = run_option(options[0], int(args.size_mb * MIB), args.protocol, work, httpbin_port)
            print(yaml.safe_dump(result, sort_keys=False), flush=True)
        finally:
            httpbin.stop()


if __name__ == "__main__":
    main()
