"""Figures for sizing a replica: `python -m tests.sizing`. Starts a real control plane process, connects
waves of ADS streams to it (as the proxies of a replica that died reconnect to a survivor), and prints its
memory (resident set) and how long each wave took to be served and ACKed. Kept out of the test suite:
these are measurements, not checks."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER
from tests.support import (
    RATELIMIT_WASM,
    ControlPlaneProcess,
    Process,
    free_port,
    sidecar_yaml,
    start_control_plane,
    wasm_plugin_yaml,
)
from tests.test_ads_protocol import Client

PLUGINS = 20
WAVES = (250, 250, 500)
"""Streams added per wave; the figures are cumulative."""


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def subscribe(control_plane: ControlPlaneProcess, index: int, labels: dict[str, str]) -> Client:
    """One proxy's stream, as Envoy opens it: clusters, listeners, then its plugins' configs, each ACKed."""
    client = Client(control_plane.xds_port, f"proxy-{index}", labels, host=control_plane.host)
    names = [f"extensions.istio.io/wasmplugin/default.plugin-{i}" for i in range(PLUGINS)]
    for type_url, subscribed in ((CLUSTER, None), (LISTENER, None), (EXTENSION_CONFIG, names)):
        client.send(type_url, subscribed)
        client.ack(await client.receive(timeout=120), subscribed)
    return client


async def waves(control_plane: ControlPlaneProcess, distinct_classes: bool) -> None:
    pid = control_plane.process.popen.pid
    idle = resident_mib(pid)
    print(f"  idle: {idle:.0f} MiB")
    clients: list[Client] = []
    for size in WAVES:
        start = time.perf_counter()
        first = len(clients)
        clients += await asyncio.gather(
            *(
                subscribe(control_plane, i, {"app": "bench", "pod": f"p{i}" if distinct_classes else "same"})
                for i in range(first, first + size)
            )
        )
        elapsed = time.perf_counter() - start
        resident = resident_mib(pid)
        print(
            f"  {len(clients):5d} streams: {resident:6.0f} MiB ({(resident - idle) * 1024 / len(clients):5.0f} KiB a "
            f"proxy); the wave of {size} served and ACKed in {elapsed:5.2f} s"
        )
    for client in clients:
        await client.close()


def main() -> None:
    asyncio.run(measure())


async def measure() -> None:
    """Both measurements in one event loop: gRPC's asyncio machinery outlives a loop it ran on."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        config_dir = root / "config"
        config_dir.mkdir()
        (config_dir / "sidecar.yaml").write_text(sidecar_yaml("bench", free_port(), free_port(), {"app": "bench"}))
        for index in range(PLUGINS):
            (config_dir / f"plugin-{index}.yaml").write_text(
                wasm_plugin_yaml(
                    f"plugin-{index}",
                    f"file://{RATELIMIT_WASM}",
                    selector={"app": "bench"},
                    config={"index": index},
                )
            )
        for distinct in (False, True):
            processes: list[Process] = []
            (root / f"logs-{distinct}").mkdir()
            control_plane = start_control_plane(processes, config_dir, root / f"logs-{distinct}")
            what = "one proxy class each" if distinct else "one proxy class for all"
            print(f"{PLUGINS} plugins on one listener, proxies of {what}:", flush=True)
            try:
                await waves(control_plane, distinct)
            finally:
                for process in processes:
                    process.stop()


if __name__ == "__main__":
    main()
