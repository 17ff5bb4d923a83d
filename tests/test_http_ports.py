"""The HTTP ports: served on the event loop with limits, so that idle or slow clients cannot take the
server down; the module port serves modules alone; the status view stays linear in the directory's size."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from types import FrameType

import pytest

import controlplane
from controlplane.admin import config_view
from controlplane.http_server import FileReply, HttpLimits, HttpServer, Reply, Request, text
from controlplane.source.directory import load_directory
from tests.support import (
    RATELIMIT_WASM,
    ControlPlaneProcess,
    Process,
    http_get,
    replicated_directory,
    start_control_plane,
    wasm_plugin_yaml,
)


@pytest.fixture
def control_plane(tmp_path: Path, processes: list[Process]) -> ControlPlaneProcess:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "limit.yaml").write_text(wasm_plugin_yaml("limit", f"file://{RATELIMIT_WASM}"))
    return start_control_plane(processes, config_dir, tmp_path)


@pytest.fixture
def idle_sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_a_thousand_idle_connections_neither_lock_out_readiness_nor_cost_a_thread_each(
    control_plane: ControlPlaneProcess, idle_sockets: list[socket.socket]
) -> None:
    threads_before = _threads(control_plane.process.popen.pid)
    for port in (control_plane.admin_port, control_plane.http_port):
        for _ in range(1100):
            idle_sockets.append(socket.create_connection(("127.0.0.1", port)))
    # Past each port's cap, the connections idle the longest were closed to make room.
    assert http_get(control_plane.admin_port, "/ready", timeout=10).status == 200
    assert http_get(control_plane.admin_port, "/healthz", timeout=10).status == 200
    sha256 = control_plane.status()["modules"][0]["module_sha256"]
    assert http_get(control_plane.http_port, f"/modules/{sha256}.wasm", timeout=10).status == 200
    assert _threads(control_plane.process.popen.pid) < threads_before + 10
    idle_sockets[0].settimeout(5)
    assert idle_sockets[0].recv(1) == b"", "the oldest idle connection was closed"
    assert control_plane.process.alive()


def test_the_module_port_serves_modules_alone_and_the_admin_port_no_modules(
    control_plane: ControlPlaneProcess,
) -> None:
    for path in ("/debug/config", "/debug/proxies", "/metrics", "/ready", "/healthz"):
        assert http_get(control_plane.http_port, path).status == 404, path
    sha256 = control_plane.status()["modules"][0]["module_sha256"]
    served = http_get(control_plane.http_port, f"/modules/{sha256}.wasm")
    assert served.status == 200 and served.body == RATELIMIT_WASM.read_bytes()
    assert http_get(control_plane.admin_port, f"/modules/{sha256}.wasm").status == 404


def test_metrics_parse_and_count_what_happened(control_plane: ControlPlaneProcess) -> None:
    metrics = control_plane.metrics()
    assert metrics["controlplane_ready", ()] == 1
    assert metrics["controlplane_modules", (("state", "ready"),)] == 1
    assert metrics["controlplane_module_fetches_total", (("result", "ready"),)] == 1
    assert metrics["controlplane_reload_seconds_count", ()] >= 1
    assert metrics["controlplane_proxies_connected", (("protocol", "delta"),)] == 0


async def _limited_server(limits: HttpLimits) -> HttpServer:
    async def handler(request: Request) -> Reply:
        return text(HTTPStatus.OK, f"{request.method} {request.path}\n")

    server = HttpServer("test", "127.0.0.1", 0, handler, limits)
    await server.start()
    return server


def test_heads_too_large_slow_or_with_bodies_are_refused_and_keep_alive_works() -> None:
    limits = HttpLimits(max_connections=4, max_header_bytes=1024, request_seconds=0.5, idle_seconds=0.5)

    async def script() -> None:
        server = await _limited_server(limits)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for path in ("/a", "/b?x=1"):  # one connection, two requests
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: keep-alive" in head
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                assert await reader.readexactly(length) == f"GET {path.split('?')[0]}\n".encode()
            # Idle past idle_seconds: closed by the server.
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

            async def exchange(data: bytes) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(data)
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                return answer

            assert (await exchange(b"GET / HTTP/1.1\r\nX: " + b"a" * 4096 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
            assert (await exchange(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")).startswith(b"HTTP/1.1 405")
            assert (await exchange(b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")).startswith(b"HTTP/1.1 400")
            # A head that never ends is cut off after request_seconds.
            assert await exchange(b"GET / HTTP/1.1\r\nX: slow") == b""
            assert server.connection_count == 0
        finally:
            await server.stop()

    asyncio.run(script())


def test_at_the_cap_busy_connections_are_kept_and_the_new_one_refused() -> None:
    limits = HttpLimits(max_connections=2, request_seconds=5, idle_seconds=5)

    async def script() -> None:
        server = await _limited_server(limits)
        try:
            # Two connections in the middle of a request: not idle, so not evicted.
            busy = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            for _, writer in busy:
                writer.write(b"GET / HTTP/1.1\r\n")
                await writer.drain()
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            for reader, writer in busy:
                writer.write(b"\r\n")
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        finally:
            await server.stop()

    asyncio.run(script())


def test_a_client_that_closes_a_module_download_early_is_a_debug_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = tmp_path / "big.wasm"
    module.write_bytes(b"\0asm" + bytes(32 * 1024 * 1024))

    async def handler(request: Request) -> FileReply:
        return FileReply(module, "application/wasm")

    async def script() -> None:
        server = HttpServer("module", "127.0.0.1", 0, handler)
        await server.start()
        try:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /big.wasm HTTP/1.1\r\n\r\n")
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readexactly(1024)
                writer.transport.abort()  # a reset, not a polite close
            while server.connection_count:
                await asyncio.sleep(0.05)
        finally:
            await server.stop()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(script())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "module port: connection ended" in caplog.text


def _lines_run(build: Callable[[], object]) -> int:
    """How many lines of the control plane's own code `build()` runs: a count, not a time, so that a
    loaded machine cannot change it."""
    package = str(Path(controlplane.__file__).parent)
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Callable[..., object] | None:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Callable[..., object] | None:
        return local if frame.f_code.co_filename.startswith(package) else None

    sys.settrace(calls)
    try:
        build()
    finally:
        sys.settrace(None)
    return count


def test_the_status_view_grows_linearly_with_the_number_of_files(tmp_path: Path) -> None:
    """8 times the files must cost about 8 times the work (a view that looks up each file's errors in the
    whole directory costs 64 times as much), counted in lines run."""
    (tmp_path / "limit.yaml").write_text(wasm_plugin_yaml("limit", f"file://{RATELIMIT_WASM}"))
    template = load_directory([str(tmp_path)])
    small, large = replicated_directory(template, 500), replicated_directory(template, 4000)
    assert len(config_view(large, {}, {}, 0.0)["files"]) == 4000
    ratio = _lines_run(lambda: config_view(large, {}, {}, 0.0)) / _lines_run(lambda: config_view(small, {}, {}, 0.0))
    assert ratio < 10, f"8 times the files ran {ratio:.1f} times as many lines"
