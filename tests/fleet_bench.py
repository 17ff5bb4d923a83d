"""A simulated fleet against the control plane, and against a bare grpc.aio server sending the same bytes:
`python -m tests.fleet_bench [--proxies 100,1000] [--protocols sotw,delta] [--workers 1,2]`.

Each proxy behaves as Envoy does on ADS: CDS and LDS wildcard, then ECDS for the names its listeners'
`config_discovery` filters give, every response parsed and ACKed, a failed stream reconnected. The
control plane runs as `python -m controlplane serve` (its CPU and memory read from /proc); the bare server
then replays the responses the fleet received from it, so both carry the same bytes. Printed per row:
connect storm (all proxies ACKed their first config), propagation (file written → last proxy ACKed the
new ECDS config; medians over the changes of the per-change p50, p99 and max over proxies), stream errors,
server CPU seconds, peak RSS and RSS per connected proxy, and the ratio to bare."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
CLIENT_PROCESSES = 2
WARM_OFFSET = 10_000_000
"""Node ids of the proxies that warm each class up, apart from the fleet's."""
CHANGED_PLUGIN = "shared-0"
PROFILE = os.environ.get("FLEET_BENCH_PROFILE", "")
"""A file to write the server's cProfile to (the last server run's)."""


# ---------------------------------------------------------------- the simulated proxies (client processes)


@dataclass
class Proxy:
    index: int
    app: str
    delta: bool
    acked_first: float = 0.0
    errors: int = 0
    marks: dict[str, float] = field(default_factory=dict)
    """Change marker to the time its ECDS config was ACKed."""
    captured: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))


def _ecds_names(listener_any: Any) -> list[str]:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    listener = listener_pb2.Listener()
    listener_any.Unpack(listener)
    names = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            manager = hcm.HttpConnectionManager()
            if network_filter.typed_config.Unpack(manager):
                names += [f.name for f in manager.http_filters if f.HasField("config_discovery")]
    return names


class Fleet:
    """What the proxies of one client process have reached, counted as they reach it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.marks: list[str] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.complete: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def reached(self, what: str) -> None:
        self.counts[what] += 1
        if self.counts[what] == self.size:
            self.complete[what].set()

    async def wait(self, what: str, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.complete[what].wait(), timeout)
        except TimeoutError:
            pass


async def run_proxy(proxy: Proxy, port: int, fleet: Fleet, capture: bool, stop: asyncio.Event) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2, extension_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    node = base_pb2.Node(id=f"proxy-{proxy.index}")
    node.metadata.update({"NAMESPACE": "default", "LABELS": {"app": proxy.app}})
    kind = discovery_pb2.DeltaDiscoveryRequest if proxy.delta else discovery_pb2.DiscoveryRequest
    response_kind = discovery_pb2.DeltaDiscoveryResponse if proxy.delta else discovery_pb2.DiscoveryResponse
    method = ADS + ("DeltaAggregatedResources" if proxy.delta else "StreamAggregatedResources")
    while not stop.is_set():
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        call = channel.stream_stream(method, request_serializer=kind.SerializeToString, response_deserializer=None)()
        acked: set[str] = set()
        ecds: list[str] = []

        def request(type_url: str, nonce: str = "", version: str = "", names: list[str] | None = None) -> Any:
            if proxy.delta:
                return kind(node=node, type_url=type_url, response_nonce=nonce, resource_names_subscribe=names or [])
            return kind(
                node=node, type_url=type_url, response_nonce=nonce, version_info=version, resource_names=names or []
            )

        try:
            await call.write(request(CLUSTER))
            await call.write(request(LISTENER))
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    break
                response = response_kind.FromString(raw)
                type_url = response.type_url
                version = "" if proxy.delta else response.version_info
                if capture:
                    proxy.captured[type_url].append(raw)
                resources = [r.resource for r in response.resources] if proxy.delta else list(response.resources)
                new_names: list[str] = []
                seen_marks = []
                for body in resources:
                    if type_url == LISTENER:
                        new_names += _ecds_names(body)
                    elif type_url == EXTENSION_CONFIG:
                        config = extension_pb2.TypedExtensionConfig()
                        body.Unpack(config)
                        seen_marks += [m for m in fleet.marks if m not in proxy.marks and m.encode() in body.value]
                # A state-of-the-world ACK names the subscription again, as Envoy's do.
                await call.write(
                    request(
                        type_url,
                        response.nonce,
                        version,
                        ecds if type_url == EXTENSION_CONFIG and not proxy.delta else None,
                    )
                )
                now = time.monotonic()
                for mark in seen_marks:
                    proxy.marks[mark] = now
                    fleet.reached(mark)
                acked.add(type_url)
                if type_url == LISTENER and sorted(new_names) != ecds:
                    ecds = sorted(new_names)
                    await call.write(request(EXTENSION_CONFIG, names=ecds))
                if not proxy.acked_first and {CLUSTER, LISTENER, EXTENSION_CONFIG} <= acked:
                    proxy.acked_first = now
                    fleet.reached("connected")
        except grpc.aio.AioRpcError:
            if stop.is_set():
                return
            proxy.errors += 1
            await asyncio.sleep(0.2)
        finally:
            await channel.close()


async def client_main(port: int, first: int, count: int, classes: int, delta: bool, capture: bool) -> None:
    """Reads commands on stdin: `mark M` (a change to watch for), `wait WHAT SECONDS` (until every proxy
    reached WHAT: `connected` or a mark; answers when each did, 0 for never), `errors`, `capture FILE`,
    `stop`."""
    proxies = [Proxy(i, f"c{i % classes}", delta) for i in range(first, first + count)]
    fleet = Fleet(len(proxies))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(run_proxy(p, port, fleet, capture, stop)) for p in proxies]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("started", flush=True)
    while line := (await reader.readline()).decode().strip():
        command, _, argument = line.partition(" ")
        if command == "mark":
            fleet.marks.append(argument)
            print("ok", flush=True)
        elif command == "wait":
            what, seconds = argument.split()
            await fleet.wait(what, float(seconds))
            times = [p.acked_first if what == "connected" else p.marks.get(what, 0.0) for p in proxies]
            print(json.dumps(times), flush=True)
        elif command == "errors":
            print(sum(p.errors for p in proxies), flush=True)
        elif command == "capture":
            by_class: dict[str, dict[str, list[bytes]]] = {}
            for p in proxies:
                by_class.setdefault(p.app, dict(p.captured))
            Path(f"{argument}.{first}").write_bytes(pickle.dumps(by_class))
            print("ok", flush=True)
        elif command == "stop":
            break
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- the bare grpc.aio server


async def bare_main(port: int, capture_file: str, delta: bool) -> None:
    """Per class, replays what the fleet received: the first CDS, LDS and ECDS responses when asked, and
    the next recorded ECDS response on each SIGUSR1. Reads and counts the ACKs, nothing more."""
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    captured: dict[str, dict[str, list[bytes]]] = {}
    for part in Path(capture_file).parent.glob(f"{Path(capture_file).name}.*"):  # one per client process
        captured.update(pickle.loads(part.read_bytes()))
    streams: dict[str, list[asyncio.Queue[bytes]]] = defaultdict(list)
    round_ = 0
    acks = 0
    kind = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest

    async def handle(requests: Any, context: Any) -> None:
        nonlocal acks
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        first = await context.read()
        app = first.node.metadata.fields["LABELS"].struct_value.fields["app"].string_value
        recorded = captured[app]
        streams[app].append(queue)

        async def read() -> None:
            nonlocal acks
            request = first
            while request is not grpc.aio.EOF:
                if request.response_nonce:
                    acks += 1
                else:
                    queue.put_nowait(recorded[request.type_url][0])
                request = await context.read()

        reader = asyncio.create_task(read())
        try:
            while True:
                await context.write(await queue.get())
        finally:
            reader.cancel()
            streams[app].remove(queue)

    def push() -> None:
        nonlocal round_
        round_ += 1
        for app, queues in streams.items():
            changes = captured[app][EXTENSION_CONFIG]
            body = changes[1 + (round_ - 1) % (len(changes) - 1)]
            for queue in queues:
                queue.put_nowait(body)

    server = grpc.aio.server(
        options=[
            ("grpc.server.max_pending_requests", 100_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
        ]
    )
    method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
    handler = grpc.stream_stream_rpc_method_handler(handle, request_deserializer=kind.FromString)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.discovery.v3.AggregatedDiscoveryService", {method: handler}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, push)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    print("ready", flush=True)
    await stopped.wait()
    await server.stop(0)


# ---------------------------------------------------------------- the driver


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            pids += process_tree(int(child))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def memory(pids: list[int], field_name: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def plugin_yaml(name: str, app: str | None, mark: str, module: str) -> str:
    selector = f"  selector:\n    matchLabels:\n      app: {app}\n" if app else ""
    return f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: {name}
  namespace: default
spec:
{selector}  url: file://{module}
  pluginName: ratelimit
  phase: AUTHZ
  pluginConfig:
    requests_per_second: 100
    mark: "{mark}"
"""


def write_config(root: Path, classes: int, plugins: int, module: str) -> None:
    (root / "sidecar.yaml").write_text(
        """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: default
spec:
  ingress:
  - port: {number: 18080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8080
"""
    )
    # Half the plugins apply to every proxy, the rest to one class each.
    for index in range(plugins):
        shared = index < plugins // 2
        name = f"shared-{index}" if shared else f"class-{index}"
        app = None if shared else f"c{index % classes}"
        (root / f"{name}.yaml").write_text(plugin_yaml(name, app, "initial", module))


def change(root: Path, mark: str, module: str) -> None:
    path = root / f"{CHANGED_PLUGIN}.yaml"
    temporary = root / f".{CHANGED_PLUGIN}.tmp"
    temporary.write_text(plugin_yaml(CHANGED_PLUGIN, None, mark, module))
    os.replace(temporary, path)


class Clients:
    def __init__(
        self,
        port: int,
        proxies: int,
        classes: int,
        delta: bool,
        capture: bool,
        processes: int = CLIENT_PROCESSES,
        offset: int = 0,
    ) -> None:
        """`offset`: the index of the first proxy (its node id is proxy-INDEX, its class app c(INDEX % classes))."""
        share = -(-proxies // processes)
        self.processes = []
        for first in range(0, proxies, share):
            args = [
                sys.executable,
                "-m",
                "tests.fleet_bench",
                "--client",
                f"{port},{offset + first},{min(share, proxies - first)},{classes},{int(delta)},{int(capture)}",
            ]
            self.processes.append(subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        self.started = time.monotonic()
        for process in self.processes:
            assert process.stdout.readline().strip() == "started"

    def ask(self, command: str) -> list[str]:
        for process in self.processes:
            process.stdin.write(command + "\n")
            process.stdin.flush()
        return [process.stdout.readline() for process in self.processes]

    def wait(self, what: str, seconds: float) -> list[float]:
        return [t for line in self.ask(f"wait {what} {seconds}") for t in json.loads(line)]

    def errors(self) -> int:
        return sum(int(line) for line in self.ask("errors"))

    def stop(self) -> None:
        self.ask("stop")
        for process in self.processes:
            process.wait(timeout=60)


def wait_until(condition: Any, timeout: float, interval: float = 0.05) -> bool:  # the server's /ready
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


@dataclass
class Row:
    name: str
    proxies: int
    connect: float
    errors: int
    p50: float
    p99: float
    worst: float
    cpu: float
    peak_rss: int
    rss_per_proxy: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drive(
    group: str,
    name: str,
    pid: int,
    port: int,
    proxies: int,
    classes: int,
    delta: bool,
    changes: int,
    trigger: Any,
    capture: str,
) -> Row:
    # One proxy per class first, so that what a class costs once (its snapshot, its response bodies) is
    # not counted as the cost of each proxy.
    warm = Clients(port, classes, classes, delta, False, processes=1, offset=WARM_OFFSET)
    warm.wait("connected", 60)
    time.sleep(1.5)
    pids = process_tree(pid)
    rss_before = memory(pids, "VmRSS")
    cpu_before = cpu_seconds(pids)
    clients = Clients(port, proxies, classes, delta, bool(capture and not name.startswith("bare")))
    acked_first = clients.wait("connected", max(60, proxies / 50))
    connect = max(acked_first) - clients.started if all(acked_first) else float("nan")
    time.sleep(2)  # the server hands back what the storm freed once it has been quiet for a second
    rss_connected = memory(process_tree(pid), "VmRSS")
    p50s, p99s, worsts = [], [], []
    for index in range(changes):
        mark = f"mark-{group}-{index}"
        clients.ask(f"mark {mark}")
        started = time.monotonic()
        trigger(index, mark)
        reached = clients.wait(mark, max(30, proxies / 100))
        if all(reached):
            times = [t - started for t in reached]
            p50s.append(percentile(times, 0.5))
            p99s.append(percentile(times, 0.99))
            worsts.append(max(times))
        time.sleep(0.5)
    if capture and not name.startswith("bare"):
        clients.ask(f"capture {capture}")
    pids = process_tree(pid)
    row = Row(
        name,
        proxies,
        connect,
        clients.errors(),
        statistics.median(p50s) if p50s else float("nan"),
        statistics.median(p99s) if p99s else float("nan"),
        statistics.median(worsts) if worsts else float("nan"),
        cpu_seconds(pids) - cpu_before,
        memory(pids, "VmHWM"),
        (rss_connected - rss_before) / proxies,
    )
    clients.stop()
    warm.stop()
    return row


def run_server(
    group: str,
    config: Path,
    scratch: Path,
    proxies: int,
    classes: int,
    delta: bool,
    changes: int,
    workers: int,
    capture: str,
    module: str,
) -> Row:
    xds, http, admin = free_port(), free_port(), free_port()
    command = ["tests.fleet_bench", "--profiled-server"] if PROFILE else ["controlplane"]
    args = [
        sys.executable,
        "-m",
        *command,
        "--log-level",
        "warning",
        "serve",
        "--config-dir",
        str(config),
        "--xds-port",
        str(xds),
        "--http-port",
        str(http),
        "--admin-port",
        str(admin),
        "--cache-dir",
        str(scratch / "cache"),
        "--resync-interval",
        "3600",
    ]
    if workers > 1:
        args += ["--workers", str(workers)]
    server = subprocess.Popen(args, stderr=open(scratch / f"server-{workers}.log", "ab"))
    import urllib.request

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200
        except OSError:
            return False

    assert wait_until(ready, 60), "control plane did not become ready"
    time.sleep(0.5 * workers)
    try:
        name = f"server{'' if workers == 1 else f' x{workers}'}"
        return drive(
            group,
            name,
            server.pid,
            xds,
            proxies,
            classes,
            delta,
            changes,
            lambda i, mark: change(config, mark, module),
            capture,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def run_bare(group: str, capture: str, proxies: int, classes: int, delta: bool, changes: int) -> Row:
    port = free_port()
    args = [sys.executable, "-m", "tests.fleet_bench", "--bare", f"{port},{int(delta)},{capture}"]
    bare = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert bare.stdout.readline().strip() == "ready"
    try:
        return drive(
            group,
            "bare grpc.aio",
            bare.pid,
            port,
            proxies,
            classes,
            delta,
            changes,
            lambda i, mark: bare.send_signal(signal.SIGUSR1),
            "",
        )
    finally:
        bare.send_signal(signal.SIGTERM)
        bare.wait(timeout=30)


def profiled_server(argv: list[str]) -> None:
    """`python -m controlplane ARGV` under cProfile, the profile written to FLEET_BENCH_PROFILE however the
    server exits: it leaves with `os._exit` when a worker thread is still busy, which `-m cProfile` misses."""
    import cProfile
    import runpy

    profiler = cProfile.Profile()
    leave = os._exit

    def dump_and_leave(status: int) -> None:
        profiler.disable()
        profiler.dump_stats(PROFILE)
        leave(status)

    os._exit = dump_and_leave  # type: ignore[assignment]
    sys.argv = ["controlplane", *argv]
    profiler.enable()
    try:
        runpy.run_module("controlplane", run_name="__main__")
    except SystemExit as exit:
        dump_and_leave(exit.code if isinstance(exit.code, int) else 1)
    dump_and_leave(0)


def main() -> None:
    if sys.argv[1:2] == ["--profiled-server"]:
        profiled_server(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", default="100,1000")
    parser.add_argument("--protocols", default="sotw,delta")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--plugins", type=int, default=50)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--workers", default="1", help="server worker counts to measure, e.g. 1,2")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        port, first, count, classes, delta, capture = (int(x) for x in args.client.split(","))
        asyncio.run(client_main(port, first, count, classes, bool(delta), bool(capture)))
        return
    if args.bare:
        port, delta, capture_file = args.bare.split(",", 2)
        asyncio.run(bare_main(int(port), capture_file, bool(int(delta))))
        return
    from tests.support import RATELIMIT_WASM

    module = str(RATELIMIT_WASM)
    print(
        f"{args.classes} proxy classes, {args.plugins} plugins, {args.changes} changes, {CLIENT_PROCESSES} client processes, {os.cpu_count()} cores"
    )
    header = f"{'protocol':8} {'server':14} {'proxies':>7} {'connect s':>9} {'errors':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'vs bare p50/p99':>15} {'cpu s':>7} {'peak MiB':>8} {'KiB/proxy':>9}"
    print(header)
    for proxies in [int(n) for n in args.proxies.split(",")]:
        for protocol in args.protocols.split(","):
            delta = protocol == "delta"
            group = f"{proxies}-{protocol}-{time.time_ns()}"
            with tempfile.TemporaryDirectory() as scratch_dir:
                scratch = Path(scratch_dir)
                config = scratch / "config"
                config.mkdir()
                write_config(config, args.classes, args.plugins, module)
                capture = str(scratch / "capture.pickle")
                rows = []
                for index, workers in enumerate(int(w) for w in args.workers.split(",")):
                    rows.append(
                        run_server(
                            group,
                            config,
                            scratch,
                            proxies,
                            args.classes,
                            delta,
                            args.changes,
                            workers,
                            capture if index == 0 else "",
                            module,
                        )
                    )
                bare = run_bare(group, capture, proxies, args.classes, delta, args.changes)
                for row in [*rows, bare]:
                    ratio = f"{row.p50 / bare.p50:.2f}/{row.p99 / bare.p99:.2f}"
                    print(
                        f"{protocol:8} {row.name:14} {row.proxies:7} {row.connect:9.2f} {row.errors:6} {row.p50:7.3f} {row.p99:7.3f} {row.worst:7.3f} {ratio:>15} {row.cpu:7.1f} {row.peak_rss / 2**20:8.0f} {row.rss_per_proxy / 1024:9.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
