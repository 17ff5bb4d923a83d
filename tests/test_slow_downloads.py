"""Module servers that send slowly hold up no config change: with more of them dripping bytes than asyncio's
default thread pool has threads, another plugin saved meanwhile is served at once. Real HTTP servers on
loopback, a real control plane."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ORDER_MARKER_WASM, Process, start_control_plane, wait_for, wasm_plugin_yaml

DEFAULT_POOL_THREADS = min(32, (os.cpu_count() or 1) + 4)
"""What asyncio's default thread pool has (ThreadPoolExecutor's default)."""
SLOW_SERVERS = DEFAULT_POOL_THREADS + 2
DRIP_SECONDS = 120.0
"""Longer than any wait below: on a server where the drips held the reload, the test fails waiting."""


class DrippingServer(http.server.ThreadingHTTPServer):
    """Answers every GET with a module-sized body sent a byte a second (within every socket timeout), and
    counts the requests it is sending to."""

    daemon_threads = True

    def __init__(self) -> None:
        self.dripping = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Drip)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/plugin.wasm"


class _Drip(http.server.BaseHTTPRequestHandler):
    server: DrippingServer

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        with self.server.lock:
            self.server.dripping += 1
        until = time.monotonic() + DRIP_SECONDS
        try:
            while time.monotonic() < until:
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass  # the client gave up

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_servers() -> Iterator[list[DrippingServer]]:
    servers = [DrippingServer() for _ in range(SLOW_SERVERS)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def local_plugin(name: str) -> str:
    return wasm_plugin_yaml(name, f"file://{ORDER_MARKER_WASM}", priority=1)


def test_slow_module_servers_do_not_delay_a_change_to_another_plugin(
    tmp_path: Path, processes: list[Process], slow_servers: list[DrippingServer]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "fast.yaml").write_text(local_plugin("fast"))
    control_plane = start_control_plane(processes, config, tmp_path)

    (config / "slow.yaml").write_text(
        "---\n".join(wasm_plugin_yaml(f"slow-{i}", server.url) for i, server in enumerate(slow_servers))
    )
    # As many as the default pool holds at least; all of them where downloads have threads of their own.
    wait_for(
        lambda: sum(1 for s in slow_servers if s.dripping) >= DEFAULT_POOL_THREADS,
        what="the slow downloads to be under way",
    )

    (config / "late.yaml").write_text(local_plugin("late"))
    wait_for(
        lambda: "late" in {s["name"] for s in control_plane.status()["serving"]},
        timeout=20,
        what="the plugin saved during the slow downloads to be served",
    )
    wait_for(lambda: control_plane.module(f"file://{ORDER_MARKER_WASM}")["state"] == "ready", what="its module")
    slow = [m for m in control_plane.status()["modules"] if m["url"].startswith("http://")]
    assert [m["state"] for m in slow] == ["fetching"] * SLOW_SERVERS, f"all still under way: {slow}"
