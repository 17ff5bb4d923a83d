"""Figures for the hot paths: `python -m tests.benchmarks`. Prints medians of repeated runs; kept out of
the test suite, whose machines are too noisy for timing."""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from controlplane.model import ModuleReady, ProxyClass, labels_from
from controlplane.source.directory import load_directory
from controlplane.translate.resources import TranslateSettings, translate
from controlplane.xds.connection import Connection, TypeState
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot
from controlplane.xds.sotw import SotwProtocol
from tests.support import sidecar_yaml, wasm_plugin_yaml

PLUGINS = 500
STREAMS = 200
RUNS = 7


def median_ms(run: Callable[[], object]) -> float:
    timings = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def write_directory(root: Path) -> None:
    (root / "sidecar.yaml").write_text(sidecar_yaml("app", 8000, 8080, {"app": "bench"}))
    for index in range(PLUGINS):
        (root / f"plugin-{index:04}.yaml").write_text(
            wasm_plugin_yaml(
                f"plugin-{index:04}",
                f"https://modules.example/p{index}.wasm",
                selector={"app": "bench"},
                phase=["AUTHN", "AUTHZ", "STATS", ""][index % 4],
                priority=index % 7,
                plugin_name="p",
                config={"index": index, "limits": [1, 2, 3]},
                sha256="a" * 64,
            )
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_directory(root)
        cold = median_ms(lambda: load_directory([str(root)]))
        loaded = load_directory([str(root)])
        warm = median_ms(lambda: load_directory([str(root)], loaded))

    config = loaded.config
    proxy = ProxyClass("default", labels_from({"app": "bench"}))
    modules = {p.module: ModuleReady("b" * 64, 1000) for p in config.plugins}
    settings = TranslateSettings()

    def build() -> Snapshot:
        resources = translate(config, proxy, modules, settings)
        return Snapshot.of(
            {CLUSTER: resources.clusters, LISTENER: resources.listeners, EXTENSION_CONFIG: resources.extension_configs}
        )

    translate_ms = median_ms(build)
    snapshot = build()
    names = frozenset(snapshot.resources(EXTENSION_CONFIG).items)

    def fan_out() -> int:
        nonces = itertools.count()
        sent = 0
        for stream in range(STREAMS):
            connection: Connection[ProxyClass] = Connection(f"proxy-{stream}", proxy, "sotw", 0.0)
            for type_url in (CLUSTER, LISTENER, EXTENSION_CONFIG):
                wildcard = type_url != EXTENSION_CONFIG
                connection.types[type_url] = TypeState(wildcard=wildcard, names=frozenset() if wildcard else names)
            responses = SotwProtocol(connection, lambda: snapshot, nonces).on_change()
            sent += sum(len(r.encoded) for r in responses)
        return sent

    fan_out_ms = median_ms(fan_out)
    tracemalloc.start()
    build()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(f"load {PLUGINS} WasmPlugin files, cold:                 {cold:8.1f} ms")
    print(f"reload, files unchanged:                           {warm:8.1f} ms  ({cold / warm:.0f}x faster)")
    print(f"translate + snapshot, one more class, {PLUGINS} plugins:  {translate_ms:8.1f} ms  (plugin configs shared)")
    print(
        f"push a full config to {STREAMS} streams (serialized):   {fan_out_ms:8.1f} ms  "
        f"({fan_out_ms / STREAMS:.2f} ms a stream, {fan_out() / STREAMS / 1024:.0f} KiB each)"
    )
    print(f"peak memory of one translation:                    {peak / 1024 / 1024:8.1f} MiB")


if __name__ == "__main__":
    main()
