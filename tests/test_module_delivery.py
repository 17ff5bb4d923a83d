"""How modules reach Envoy: an upgrade under load lets no request past a FAIL_CLOSE plugin and drains no
connection; a module too large for Envoy's remote fetch still runs and `validate` shows our own limit; a
proxy that connects after the cache dir is gone, and cache-dir faults of every kind, change nothing of
what runs; the extension-config service holds one copy of a module however many label sets it serves."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.app import ControlPlane, ServeSettings
from controlplane.model import ProxyClass
from controlplane.modules.store import ModuleStore
from controlplane.processes import controlplane_command
from controlplane.xds.connection import Connection
from controlplane.xds.snapshot import EXTENSION_CONFIG, Snapshot
from controlplane.xds.sotw import SotwProtocol
from tests.support import (
    BOTH_PROTOCOLS,
    ORDER_MARKER_WASM,
    RATELIMIT_WASM,
    UNPRIVILEGED,
    Process,
    Stack,
    Traffic,
    burst,
    free_port,
    http_get,
    padded,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
)

MARKER = "x-plugin-order"
MIB = 1024 * 1024
RATELIMIT_FILTER = "extensions.istio.io/wasmplugin/default.ratelimit"


def marker(path: Path, name: str) -> str:
    return wasm_plugin_yaml(
        "marker", f"file://{path}", selector={"app": "httpbin"}, plugin_name="marker", config={"name": name}
    )


def ratelimit(path: Path, requests_per_second: int = 1000, selector: dict[str, str] | None = None) -> str:
    return wasm_plugin_yaml(
        "ratelimit",
        f"file://{path}",
        selector=selector,
        plugin_name="ratelimit",
        config={"requests_per_second": requests_per_second},
    )


@BOTH_PROTOCOLS
def test_a_module_upgrade_under_load_lets_nothing_past_the_plugin_and_drains_no_connection(
    stack: Stack, tmp_path: Path
) -> None:
    v1, v2 = tmp_path / "v1.wasm", tmp_path / "v2.wasm"
    v1.write_bytes(padded(ORDER_MARKER_WASM.read_bytes(), 10 * MIB, "v1"))
    v2.write_bytes(padded(ORDER_MARKER_WASM.read_bytes(), 10 * MIB, "v2"))
    stack.write("marker.yaml", marker(v1, "v1"))
    wait_for(lambda: http_get(stack.port).headers.get(MARKER) == "v1", 60, what="the first module to run")
    keep_alive = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
    keep_alive.request("GET", "/get")
    keep_alive.getresponse().read()
    listeners_modified = stack.envoy.stats().get("listener_manager.listener_modified", 0)

    with Traffic(stack.port, MARKER) as traffic:
        wait_for(lambda: traffic.counts["plugin v1"] >= 10, what="traffic through the first module")
        stack.write("marker.yaml", marker(v2, "v2"))
        wait_for(lambda: traffic.counts["plugin v2"] >= 20, 90, what="traffic through the new module")
    assert set(traffic.counts) == {"plugin v1", "plugin v2"}, f"every request met the plugin: {traffic.counts}"
    assert stack.envoy.stats().get("listener_manager.listener_modified", 0) == listeners_modified
    keep_alive.request("GET", "/get")
    response = keep_alive.getresponse()
    response.read()
    assert response.status == 200 and response.getheader(MARKER) == "v2"
    assert response.getheader("connection", "").lower() != "close", "the listener was not drained"
    keep_alive.close()


def test_a_module_over_envoys_remote_code_limit_runs(stack: Stack, tmp_path: Path) -> None:
    # Envoy buffers a remote fetch to at most 32 MiB (its async HTTP client's response limit); a module
    # inside the config has no such limit.
    big = tmp_path / "big.wasm"
    big.write_bytes(padded(RATELIMIT_WASM.read_bytes(), 33 * MIB, "big"))
    stack.write("ratelimit.yaml", ratelimit(big, selector={"app": "httpbin"}))
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, 120, what="the 33 MiB module to run")
    module = stack.control_plane.module(f"file://{big}")
    assert module["state"] == "ready" and module["size"] == big.stat().st_size


@pytest.mark.integration
def test_validate_shows_a_module_over_the_size_limit_at_its_plugin(tmp_path: Path) -> None:
    module = tmp_path / "plugin.wasm"
    module.write_bytes(padded(RATELIMIT_WASM.read_bytes(), 64 * 1024, "x"))
    config = tmp_path / "config"
    config.mkdir()
    path = config / "ratelimit.yaml"
    path.write_text(ratelimit(module))

    def validate(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(controlplane_command("validate", str(config), *flags), capture_output=True, text=True)

    assert validate().returncode == 0
    refused = validate("--max-module-size", "32768")
    assert refused.returncode == 1
    size = module.stat().st_size
    assert f"{path}:1: spec.url: module {module} is {size} bytes, over the limit of 32768" in refused.stderr


def test_a_proxy_that_connects_after_the_cache_dir_is_deleted_runs_the_plugin(
    stack: Stack, tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    other_port = free_port()
    stack.write("other-sidecar.yaml", sidecar_yaml("other", other_port, httpbin_port, {"app": "other"}))
    stack.write("ratelimit.yaml", ratelimit(RATELIMIT_WASM))
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the plugin on the first proxy")
    shutil.rmtree(tmp_path / "cache")

    start_envoy(processes, tmp_path, stack.control_plane.xds_port, "other-1", labels={"app": "other"})
    wait_for(lambda: "who-am-i" in http_get(other_port).headers, 30, what="the plugin on the late proxy")
    assert [r.status for r in burst(other_port, 3)] == [200] * 3
    for proxy in stack.control_plane.status("proxies"):
        assert all(not t["error"] for t in proxy["types"].values()), proxy


@contextlib.contextmanager
def small_filesystem(folder: Path) -> Iterator[None]:
    """A real filesystem that can fill up: a 1 MiB tmpfs mounted on `folder`."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()


@pytest.mark.parametrize("fault", ["deleted", "read-only", "full", "unreadable module"])
def test_a_cache_dir_fault_keeps_file_plugins_running_through_rescans_and_changes(
    fault: str, tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    cache = tmp_path / "cache"
    config = tmp_path / "config"
    config.mkdir()
    port = free_port()
    (config / "sidecar.yaml").write_text(sidecar_yaml("httpbin", port, httpbin_port, {"app": "httpbin"}))
    module = tmp_path / "ratelimit.wasm"
    module.write_bytes(RATELIMIT_WASM.read_bytes())
    (config / "ratelimit.yaml").write_text(ratelimit(module, 1000))
    with contextlib.ExitStack() as cleanup:
        if fault == "full":
            cleanup.enter_context(small_filesystem(cache))
        control_plane = start_control_plane(
            processes, config, tmp_path, "--resync-interval", "1", cache_dir=cache, command_prefix=UNPRIVILEGED
        )
        envoy = start_envoy(processes, tmp_path, control_plane.xds_port, "httpbin-1", labels={"app": "httpbin"})
        wait_for(lambda: "who-am-i" in http_get(port).headers, what="the plugin to run")

        if fault == "deleted":
            shutil.rmtree(cache)
        elif fault == "read-only":
            os.chmod(cache, 0o555)
            cleanup.callback(os.chmod, cache, 0o755)
        elif fault == "full":
            fill(cache)
        else:
            for cached in cache.glob("*.wasm"):
                os.chmod(cached, 0)

        # A change of the plugin (a reload, its module read again) and a new module, both after the fault.
        (config / "ratelimit.yaml").write_text(ratelimit(module, 999))
        wait_for(
            lambda: '"requests_per_second":999' in str(envoy.extension_configs().get(RATELIMIT_FILTER)),
            30,
            what="the changed plugin in Envoy",
        )
        assert all("who-am-i" in r.headers and r.status == 200 for r in burst(port, 3))
        new_module = tmp_path / "ratelimit-2.wasm"
        new_module.write_bytes(padded(RATELIMIT_WASM.read_bytes(), 64 * 1024, "2"))
        (config / "ratelimit.yaml").write_text(ratelimit(new_module, 998))
        wait_for(
            lambda: '"requests_per_second":998' in str(envoy.extension_configs().get(RATELIMIT_FILTER)),
            30,
            what="the plugin with its new module in Envoy",
        )
        responses = burst(port, 3)
        assert all("who-am-i" in r.headers and r.status == 200 for r in responses), [r.status for r in responses]
        assert control_plane.module(f"file://{new_module}")["state"] == "ready"


def test_the_extension_config_service_keeps_one_copy_of_a_module_for_every_label_set(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    module = tmp_path / "ratelimit.wasm"
    module.write_bytes(padded(RATELIMIT_WASM.read_bytes(), MIB, "shared"))
    (config / "ratelimit.yaml").write_text(ratelimit(module))

    async def snapshots() -> list[object]:
        plane = ControlPlane(ServeSettings(config_dirs=(str(config),), cache_dir=str(tmp_path / "cache")))
        await plane.reload()
        await plane.modules.settled()
        classes = [ProxyClass("default", (("pod", f"p{i}"),), standalone_ecds=True) for i in range(60)]
        loaded, statuses = plane.loaded.config, plane.modules.statuses
        snapshots = [plane.snapshots.build(loaded, statuses, proxy) for proxy in classes]
        return [snapshot.resources(EXTENSION_CONFIG).items[RATELIMIT_FILTER] for snapshot in snapshots]

    resources = asyncio.run(snapshots())
    assert len({id(r.body) for r in resources}) == 1  # type: ignore[attr-defined]
    assert len(resources[0].body.value) > MIB  # type: ignore[attr-defined]


def test_a_config_envoy_rejects_shows_on_its_module_and_the_last_accepted_one_keeps_running(
    tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    # Local delivery, with the proxy's view of the shared folder about to disappear (an unmounted volume).
    shared = tmp_path / "shared"
    shared.symlink_to(tmp_path / "cache")
    config = tmp_path / "config"
    config.mkdir()
    port = free_port()
    (config / "sidecar.yaml").write_text(sidecar_yaml("httpbin", port, httpbin_port, {"app": "httpbin"}))
    (config / "ratelimit.yaml").write_text(ratelimit(RATELIMIT_WASM, 1000))
    control_plane = start_control_plane(
        processes, config, tmp_path, "--module-delivery", "local", "--local-module-dir", str(shared)
    )
    start_envoy(processes, tmp_path, control_plane.xds_port, "httpbin-1", labels={"app": "httpbin"})
    wait_for(lambda: "who-am-i" in http_get(port).headers, what="the plugin to run")
    assert "rejected_by" not in control_plane.module(f"file://{RATELIMIT_WASM}")

    shared.unlink()
    (config / "ratelimit.yaml").write_text(ratelimit(RATELIMIT_WASM, 999))
    module = wait_for(
        lambda: (m := control_plane.module(f"file://{RATELIMIT_WASM}")).get("rejected_by") and m,
        what="Envoy's rejection on the module",
    )
    [rejection] = module["rejected_by"]
    assert rejection["node"] == "httpbin-1" and str(shared) in rejection["error"], rejection
    assert all("who-am-i" in r.headers and r.status == 200 for r in burst(port, 3)), "the plugin still runs"


def test_state_of_the_world_sends_only_the_plugin_configs_that_changed() -> None:
    # Each config may carry a module of megabytes: a change of one must not resend the others.
    def configs(version_b: str) -> Snapshot:
        messages = [
            extension_pb2.TypedExtensionConfig(name=name, typed_config=any_pb2.Any(value=value.encode()))
            for name, value in (("a", "module a"), ("b", version_b))
        ]
        return Snapshot.of({EXTENSION_CONFIG: messages})

    current = configs("module b")
    protocol: SotwProtocol[str] = SotwProtocol(Connection("p", "k", "sotw", 0.0), lambda: current, itertools.count())
    [answer] = protocol.on_request(discovery_pb2.DiscoveryRequest(type_url=EXTENSION_CONFIG, resource_names=["a", "b"]))
    first = answer.message()
    assert len(first.resources) == 2
    ack = discovery_pb2.DiscoveryRequest(
        type_url=EXTENSION_CONFIG,
        resource_names=["a", "b"],
        version_info=first.version_info,
        response_nonce=first.nonce,
    )
    assert protocol.on_request(ack) == []
    current = configs("module b, version 2")
    [pushed] = protocol.on_change()
    update = pushed.message()
    sent = [extension_pb2.TypedExtensionConfig.FromString(r.value) for r in update.resources]
    assert [(c.name, c.typed_config.value) for c in sent] == [("b", b"module b, version 2")]
    assert update.version_info == current.resources(EXTENSION_CONFIG).version


def test_the_store_serves_from_memory_when_its_folder_is_gone_and_forgets_what_no_plugin_uses(
    tmp_path: Path,
) -> None:
    store = ModuleStore(tmp_path / "cache")
    kept, dropped = store.put(RATELIMIT_WASM.read_bytes()), store.put(ORDER_MARKER_WASM.read_bytes())
    shutil.rmtree(tmp_path / "cache")
    assert store.read(kept) == RATELIMIT_WASM.read_bytes() and store.intact(kept)
    store.keep_only([kept])
    assert store.read(dropped) is not None, "a module put a moment ago may not have its status yet"
    assert store.put(ORDER_MARKER_WASM.read_bytes()) == dropped and store.has(dropped), "the folder is made again"

    impatient = ModuleStore(tmp_path / "other", just_put_seconds=0)
    kept, dropped = impatient.put(RATELIMIT_WASM.read_bytes()), impatient.put(ORDER_MARKER_WASM.read_bytes())
    shutil.rmtree(tmp_path / "other")
    impatient.keep_only([kept])
    assert impatient.read(dropped) is None and impatient.read(kept) is not None
