"""SIGTERM: the server stops within seconds and quietly, whatever it is doing, and the Envoys it served
keep their config and reconnect."""

from __future__ import annotations

import http.server
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    RATELIMIT_WASM,
    Process,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
)


class _Trickle(http.server.BaseHTTPRequestHandler):
    """A module server that sends a byte now and then, for ever: a download that never ends."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(10 * 1024 * 1024))
        self.end_headers()
        try:
            self.wfile.write(b"\0asm\1\0\0\0")
            while not self.server.stopping.is_set():  # type: ignore[attr-defined]
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def trickle() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    server.stopping = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.stopping.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_sigterm_stops_within_seconds_quietly_during_an_endless_download(
    tmp_path: Path, httpbin_port: int, processes: list[Process], trickle: int
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    port = free_port()
    (config_dir / "sidecar.yaml").write_text(sidecar_yaml("httpbin", port, httpbin_port, {"app": "httpbin"}))
    (config_dir / "limit.yaml").write_text(
        wasm_plugin_yaml("limit", f"file://{RATELIMIT_WASM}", selector={"app": "httpbin"}, plugin_name="ratelimit")
    )
    control_plane = start_control_plane(processes, config_dir, tmp_path)
    envoys = [
        start_envoy(
            processes, tmp_path, control_plane.xds_port, f"httpbin-{i}", labels={"app": "httpbin"}, delta=i == 1
        )
        for i in range(2)
    ]
    wait_for(lambda: "who-am-i" in http_get(port).headers, what="the plugin")
    wait_for(lambda: len(control_plane.status("proxies")) == 2, what="both proxies")
    (config_dir / "slow.yaml").write_text(
        wasm_plugin_yaml("slow", f"http://127.0.0.1:{trickle}/plugin.wasm", selector={"app": "other"})
    )
    wait_for(
        lambda: [m["state"] for m in control_plane.status()["modules"]].count("fetching") == 1,
        what="a download under way",
    )
    time.sleep(1)

    started = time.monotonic()
    control_plane.process.popen.send_signal(signal.SIGTERM)
    try:
        code = control_plane.process.popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("still running 15 s after SIGTERM") from None
    print(f"stopped {time.monotonic() - started:.2f} s after SIGTERM")
    assert code == 0
    log = control_plane.process.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    # The proxies keep serving what they had.
    for envoy in envoys:
        assert envoy.process.alive()
    assert "who-am-i" in http_get(port).headers
