"""Several replicas of the control plane, as a Kubernetes Deployment runs them: separate processes, each on
its own loopback address (127.0.0.2, 127.0.0.3, ...) with the same ports, following the same directory
(or each its own copy, as each pod's git-sync has). They share nothing; Envoy lists every replica in its
xDS cluster through one name (a headless Service's), resolved by a DNS server on loopback (tests/dns.py)
because cluster DNS cannot run here."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.bootstrap import envoy_bootstrap
from controlplane.render import message_as_dict
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER
from tests.dns import DnsServer, dns_server
from tests.support import (
    ORDER_MARKER_WASM,
    ControlPlaneProcess,
    EnvoyProcess,
    Process,
    config_reloads,
    free_port,
    free_port_on,
    http_get,
    run_envoy,
    sidecar_yaml,
    start_control_plane,
    wait_for,
    wasm_plugin_yaml,
    write_atomically,
)
from tests.test_ads_protocol import Client

pytestmark = pytest.mark.integration

SERVICE = "controlplane.test"
"""The name that resolves to every replica, as a headless Service's name does."""
PLUGIN = "extensions.istio.io/wasmplugin/default.marker"
RELOADS = f"extension_config_discovery.http_filter.{PLUGIN}.config_reload"
MARKER_HEADER = "x-plugin-order"
FAILOVER_SECONDS = 30.0


def marker(name: str) -> str:
    return wasm_plugin_yaml("marker", f"file://{ORDER_MARKER_WASM}", selector={"app": "httpbin"}, config={"name": name})


def write_config(config_dir: Path, listen_port: int, httpbin_port: int, name: str) -> None:
    config_dir.mkdir(exist_ok=True)
    (config_dir / "sidecar.yaml").write_text(sidecar_yaml("httpbin", listen_port, httpbin_port, {"app": "httpbin"}))
    write_atomically(config_dir / "marker.yaml", marker(name))


def start_replicas(
    processes: list[Process], tmp_path: Path, config_dirs: list[Path], dns: DnsServer
) -> list[ControlPlaneProcess]:
    hosts = [f"127.0.0.{2 + i}" for i in range(len(config_dirs))]
    ports = (free_port_on(hosts), free_port_on(hosts))
    dns.records[SERVICE] = hosts
    replicas = []
    for host, config_dir in zip(hosts, config_dirs, strict=True):
        (tmp_path / host).mkdir()
        replicas.append(
            start_control_plane(
                processes,
                config_dir,
                tmp_path / host,
                ports=ports,
                host=host,
            )
        )
    return replicas


@dataclass
class Traffic:
    """Requests sent one after another through Envoy while a test moves it between replicas; every
    response is kept, so that a single failed request is seen."""

    port: int
    results: list[tuple[int, str] | str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                response = http_get(self.port, timeout=5)
                self.results.append((response.status, response.headers.get(MARKER_HEADER, "")))
            except OSError as exc:
                self.results.append(repr(exc))
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()

    def more(self, count: int = 10) -> None:
        """Waits until `count` more requests have been answered (or failed)."""
        target = len(self.results) + count
        wait_for(lambda: len(self.results) >= target, what=f"{count} more requests")

    def markers(self) -> set[str]:
        return {r[1] for r in self.results if isinstance(r, tuple)}

    def failures(self) -> list[Any]:
        return [r for r in self.results if not (isinstance(r, tuple) and r[0] == 200 and r[1])]


@contextlib.contextmanager
def traffic(port: int) -> Iterator[Traffic]:
    sender = Traffic(port)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        sender.stop()
        thread.join()


def start_envoy_on(
    processes: list[Process], tmp_path: Path, replicas: list[ControlPlaneProcess], dns: DnsServer, delta: bool
) -> EnvoyProcess:
    """Envoy with one xDS address, the Service name, resolved to every replica: the example bootstrap for
    Kubernetes (envoy/bootstrap-kubernetes.yaml) with the DNS stand-in."""
    bootstrap = message_as_dict(
        envoy_bootstrap(
            "httpbin-1", "default", {"app": "httpbin"}, SERVICE, replicas[0].xds_port, free_port(), delta=delta
        )
    )
    bootstrap["typed_dns_resolver_config"] = dns.envoy_resolver()
    return run_envoy(processes, tmp_path, "httpbin-1", bootstrap)


def serving(replica: ControlPlaneProcess) -> bool:
    """Whether Envoy's stream is on this replica and Envoy has ACKed all it was sent there."""
    try:
        proxies = replica.status("proxies")
    except OSError:
        return False
    return any(
        p["node"] == "httpbin-1"
        and p["types"]
        and all(s["acked"] == s["sent"] and not s["rejected"] for s in p["types"].values())
        for p in proxies
    )


def connected(replicas: list[ControlPlaneProcess]) -> ControlPlaneProcess:
    return wait_for(lambda: next((r for r in replicas if serving(r)), None), what="a replica serving Envoy")


def unchanged_by_a_move(envoy: EnvoyProcess) -> dict[str, int]:
    """What would move if Envoy applied anything on moving: listener, cluster and ECDS updates and Wasm VMs."""
    stats = envoy.stats()
    return config_reloads(stats) | {name: value for name, value in stats.items() if name.startswith("wasm.")}


def three_replicas_and_envoy(
    tmp_path: Path, httpbin_port: int, processes: list[Process], dns: DnsServer, delta: bool, name: str
) -> tuple[int, list[ControlPlaneProcess], EnvoyProcess]:
    """Three replicas on one directory and an Envoy running the marker plugin `name` through one of them;
    the port of Envoy's listener."""
    listen_port = free_port()
    write_config(tmp_path / "config", listen_port, httpbin_port, name)
    replicas = start_replicas(processes, tmp_path, [tmp_path / "config"] * 3, dns)
    envoy = start_envoy_on(processes, tmp_path, replicas, dns, delta)
    wait_for(lambda: http_get(listen_port).headers.get(MARKER_HEADER) == name, what="the plugin to run")
    return listen_port, replicas, envoy


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server({}) as server:
        yield server


def test_replicas_on_one_directory_send_byte_identical_resources_and_versions(
    tmp_path: Path, httpbin_port: int, processes: list[Process], dns: DnsServer
) -> None:
    write_config(tmp_path / "config", free_port(), httpbin_port, "same")
    replicas = start_replicas(processes, tmp_path, [tmp_path / "config"] * 3, dns)

    async def sotw(replica: ControlPlaneProcess) -> list[tuple[str, str, list[bytes]]]:
        client = Client(replica.xds_port, "proxy-1", {"app": "httpbin"}, host=replica.host)
        try:
            answers = []
            for type_url, names in ((CLUSTER, None), (LISTENER, None), (EXTENSION_CONFIG, [PLUGIN])):
                client.send(type_url, names)
                response = await client.receive()
                answers.append((type_url, response.version_info, [r.SerializeToString() for r in response.resources]))
            return answers
        finally:
            await client.close()

    async def delta(replica: ControlPlaneProcess) -> list[tuple[str, list[tuple[str, str, bytes]]]]:
        client = Client(replica.xds_port, "proxy-1", {"app": "httpbin"}, delta=True, host=replica.host)
        try:
            answers = []
            for type_url, names in ((CLUSTER, None), (LISTENER, None), (EXTENSION_CONFIG, [PLUGIN])):
                client.send_delta(type_url, names)
                response = await client.receive()
                resources = sorted((r.name, r.version, r.resource.SerializeToString()) for r in response.resources)
                answers.append((type_url, resources))
            return answers
        finally:
            await client.close()

    async def script() -> None:
        first, *others = [await sotw(r) for r in replicas]
        assert all(answer == first for answer in others)
        assert all(resources for _, _, resources in first)
        first_delta, *others_delta = [await delta(r) for r in replicas]
        assert all(answer == first_delta for answer in others_delta)
        assert all(version for _, resources in first_delta for _, version, _ in resources)

    asyncio.run(script())


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_moves_to_another_replica_when_its_own_is_killed_and_reloads_nothing(
    tmp_path: Path, httpbin_port: int, processes: list[Process], dns: DnsServer, delta: bool
) -> None:
    listen_port, replicas, envoy = three_replicas_and_envoy(tmp_path, httpbin_port, processes, dns, delta, "before")
    first = connected(replicas)
    before = unchanged_by_a_move(envoy)
    assert any(name.startswith("wasm.") for name in before), "Envoy reports its Wasm VMs"

    with traffic(listen_port) as sent:
        sent.more()
        first.process.popen.send_signal(signal.SIGKILL)
        first.process.popen.wait()
        survivors = [r for r in replicas if r is not first]
        second = wait_for(
            lambda: next((r for r in survivors if serving(r)), None), FAILOVER_SECONDS, what="Envoy on a survivor"
        )
        wait_for(lambda: envoy.stats()["control_plane.connected_state"] == 1, what="Envoy connected again")
        sent.more()
        moved = unchanged_by_a_move(envoy)

        # The next change comes from the replica Envoy moved to.
        write_atomically(tmp_path / "config" / "marker.yaml", marker("after"))
        wait_for(lambda: "after" in sent.markers(), what="the change through the survivor")

    assert moved == before
    assert sent.failures() == [], f"{len(sent.failures())} of {len(sent.results)} requests failed"
    assert sent.markers() == {"before", "after"}
    # Envoy runs a config before it ACKs it: the request that showed "after" can beat the ACK to the replica.
    wait_for(lambda: serving(second), what="the ACK of the change on the survivor")
    # The change is one ECDS update (its Wasm VMs start again with the new configuration): no listener and
    # no cluster is touched.
    changed = config_reloads(envoy.stats())
    assert changed.pop(RELOADS) == before[RELOADS] + 1
    assert changed == {name: value for name, value in config_reloads(before).items() if name != RELOADS}


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_proxy_moving_to_a_replica_that_lags_takes_its_config_and_converges_when_it_catches_up(
    tmp_path: Path, httpbin_port: int, processes: list[Process], dns: DnsServer, delta: bool
) -> None:
    """Each replica follows its own copy of the repository (each pod has its git-sync), so for a moment
    they disagree: the proxy takes whatever the replica it is on serves, without a NACK or a loop."""
    listen_port = free_port()
    dirs = [tmp_path / "config-a", tmp_path / "config-b"]
    for config_dir in dirs:
        write_config(config_dir, listen_port, httpbin_port, "old")
    replicas = start_replicas(processes, tmp_path, dirs, dns)
    envoy = start_envoy_on(processes, tmp_path, replicas, dns, delta)
    wait_for(lambda: http_get(listen_port).headers.get(MARKER_HEADER) == "old", what="the plugin to run")
    ahead = connected(replicas)
    [behind] = [r for r in replicas if r is not ahead]
    ahead_dir, behind_dir = (dirs[replicas.index(r)] for r in (ahead, behind))
    start = envoy.stats()
    shown = []

    with traffic(listen_port) as sent:
        sent.more()
        write_atomically(ahead_dir / "marker.yaml", marker("new"))
        wait_for(lambda: envoy.stats()[RELOADS] == start[RELOADS] + 1, what="the change from the replica ahead")
        wait_for(lambda: http_get(listen_port).headers.get(MARKER_HEADER) == "new", what="the new config to run")
        sent.more()
        shown.append(sent.markers())

        ahead.process.popen.send_signal(signal.SIGKILL)
        ahead.process.popen.wait()
        wait_for(lambda: serving(behind), FAILOVER_SECONDS, what="Envoy on the replica behind")
        wait_for(lambda: http_get(listen_port).headers.get(MARKER_HEADER) == "old", what="the lagging config to run")
        sent.more()
        lagging = envoy.stats()

        shutil.copy(ahead_dir / "marker.yaml", behind_dir / "marker.yaml.tmp")
        (behind_dir / "marker.yaml.tmp").rename(behind_dir / "marker.yaml")
        wait_for(lambda: http_get(listen_port).headers.get(MARKER_HEADER) == "new", what="convergence")
        wait_for(lambda: serving(behind), what="the ACK of the caught-up config")
        sent.more()

    end = envoy.stats()
    # One ECDS update per config the proxy was on: new (ahead), old (behind), new (caught up).
    assert (lagging[RELOADS], end[RELOADS]) == (start[RELOADS] + 2, start[RELOADS] + 3)
    assert end["listener_manager.listener_modified"] == start["listener_manager.listener_modified"]
    assert end.get(f"extension_config_discovery.http_filter.{PLUGIN}.config_fail", 0) == 0
    assert [bool(s["rejected"]) for p in behind.status("proxies") for s in p["types"].values()] == [False] * 3
    assert envoy.process.alive()
    assert sent.failures() == []
    assert shown == [{"old", "new"}] and sent.markers() == {"old", "new"}


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_sigterm_drains_a_replica_its_proxies_move_to_the_others_with_no_failed_request(
    tmp_path: Path, httpbin_port: int, processes: list[Process], dns: DnsServer, delta: bool
) -> None:
    listen_port, replicas, envoy = three_replicas_and_envoy(tmp_path, httpbin_port, processes, dns, delta, "steady")
    first = connected(replicas)
    before = unchanged_by_a_move(envoy)

    with traffic(listen_port) as sent:
        sent.more()
        first.process.popen.send_signal(signal.SIGTERM)
        # Kubernetes waits terminationGracePeriodSeconds (30 s) before it kills; a drained replica is gone
        # long before.
        exit_code = first.process.popen.wait(timeout=30)
        wait_for(lambda: any(serving(r) for r in replicas if r is not first), FAILOVER_SECONDS, what="Envoy on another")

    assert exit_code == 0
    assert unchanged_by_a_move(envoy) == before
    assert sent.failures() == []
