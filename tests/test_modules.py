"""Modules from http(s) and files: downloaded, unpacked, checked against sha256 and served to a real Envoy."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controlplane.processes import controlplane_command
from tests.support import (
    RATELIMIT_WASM,
    Process,
    Stack,
    burst,
    http_get,
    start_control_plane,
    wait_for,
    wasm_plugin_yaml,
)

MODULE = RATELIMIT_WASM.read_bytes()
MODULE_SHA256 = hashlib.sha256(MODULE).hexdigest()


def _tar_gz(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


FILES = {
    "/plugin.wasm": MODULE,
    "/plugin.wasm.gz": gzip.compress(MODULE),
    "/plugin.tar.gz": _tar_gz(MODULE),
    "/not-wasm.wasm": b"<html>not a module</html>",
}


@pytest.fixture(scope="module")
def module_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = FILES.get(self.path.split("?", 1)[0])
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def apply(stack: Stack, url: str, sha256: str = "", fail_strategy: str = "") -> None:
    text = wasm_plugin_yaml(
        "limit",
        url,
        selector={"app": "httpbin"},
        plugin_name="ratelimit",
        fail_strategy=fail_strategy,
        config={"requests_per_second": 2},
        sha256=sha256,
    )
    stack.write("limit.yaml", text)
    wait_for(
        lambda: "extensions.istio.io/wasmplugin/default.limit" in stack.envoy.extension_configs(),
        what="the plugin's config in Envoy",
    )


@pytest.mark.parametrize("path", ["/plugin.wasm", "/plugin.wasm.gz", "/plugin.tar.gz"])
def test_http_module_is_unpacked_verified_and_runs(stack: Stack, module_server: int, path: str) -> None:
    apply(stack, f"http://127.0.0.1:{module_server}{path}", sha256=MODULE_SHA256)
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the plugin to run")
    module = stack.control_plane.module(f"http://127.0.0.1:{module_server}{path}")
    assert module == {
        "url": f"http://127.0.0.1:{module_server}{path}",
        "sha256": MODULE_SHA256,
        "pull_secret": "",
        "plugins": ["default/limit"],
        "state": "ready",
        "module_sha256": MODULE_SHA256,
        "size": len(MODULE),
    }
    served = http_get(stack.control_plane.http_port, f"/modules/{MODULE_SHA256}.wasm")
    assert served.status == 200 and served.body == MODULE


@pytest.mark.parametrize(("fail_strategy", "expected"), [("", 403), ("FAIL_OPEN", 200)])
def test_wrong_sha256_is_a_fetch_failure_handled_by_fail_strategy(
    stack: Stack, module_server: int, fail_strategy: str, expected: int
) -> None:
    url = f"http://127.0.0.1:{module_server}/plugin.wasm"
    apply(stack, url, sha256="0" * 64, fail_strategy=fail_strategy)
    responses = burst(stack.port, 3)
    assert [r.status for r in responses] == [expected] * 3
    assert all("who-am-i" not in r.headers for r in responses)
    # A FAIL_OPEN stand-in serves while the module is still being fetched: wait for the fetch to fail.
    module = wait_for(lambda: (m := stack.control_plane.module(url))["state"] == "failed" and m, what="the failure")
    assert "sha256 mismatch" in module["reason"]


def test_a_file_that_is_not_wasm_never_reaches_envoy(stack: Stack, module_server: int) -> None:
    url = f"http://127.0.0.1:{module_server}/not-wasm.wasm"
    apply(stack, url)
    assert [r.status for r in burst(stack.port, 2)] == [403, 403]
    assert "not a WebAssembly module" in stack.control_plane.module(url)["reason"]


@pytest.mark.integration
def test_render_prints_the_resources_with_typed_configs_decoded(tmp_path: Path) -> None:
    config_dir = Path(__file__).resolve().parents[1] / "fixtures" / "config"
    result = subprocess.run(
        controlplane_command(
            "render",
            str(config_dir),
            "--namespace",
            "default",
            "--labels",
            "app=httpbin",
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    rendered = yaml.safe_load(result.stdout)
    [extension] = rendered["extension_configs"]
    config = extension["typed_config"]["config"]
    assert extension["name"] == "extensions.istio.io/wasmplugin/default.ratelimit"
    assert config["root_id"] == "ratelimit"
    assert config["configuration"]["value"] == '{"deny_status":429,"requests_per_second":2}'
    assert config["vm_config"]["vm_id"] == MODULE_SHA256
    assert config["vm_config"]["code"]["local"]["inline_bytes"] == f"<{len(MODULE)} bytes of Wasm>"
    [listener] = rendered["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == [extension["name"], "envoy.filters.http.router"]


def test_the_status_view_lists_every_module_of_a_url_without_its_credentials(
    module_server: int, tmp_path: Path, processes: list[Process]
) -> None:
    secrets = ("s3cretpw", "TOPSECRET")
    url = f"http://alice:s3cretpw@127.0.0.1:{module_server}/plugin.wasm?access_token=TOPSECRET"
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "right.yaml").write_text(wasm_plugin_yaml("right", url, sha256=MODULE_SHA256))
    (config_dir / "also-right.yaml").write_text(wasm_plugin_yaml("also-right", url, sha256=MODULE_SHA256))
    (config_dir / "wrong.yaml").write_text(wasm_plugin_yaml("wrong", url, sha256="0" * 64))
    control_plane = start_control_plane(processes, config_dir, tmp_path)

    def settled() -> list[dict[str, object]]:
        modules = control_plane.status()["modules"]
        return modules if all(m["state"] != "fetching" for m in modules) else []

    modules = wait_for(settled, what="both modules of the url to settle")
    shown = f"http://127.0.0.1:{module_server}/plugin.wasm"
    assert [(m["url"], m["sha256"], m["plugins"], m["state"]) for m in modules] == [
        (shown, "0" * 64, ["default/wrong"], "failed"),
        (shown, MODULE_SHA256, ["default/also-right", "default/right"], "ready"),
    ]
    body = http_get(control_plane.http_port, "/debug/config").body.decode()
    assert not [s for s in secrets if s in body + control_plane.process.log()]


def test_a_corrupt_gzip_is_a_fetch_failure_handled_by_fail_strategy(stack: Stack, module_server: int) -> None:
    FILES["/corrupt.wasm.gz"] = gzip.compress(MODULE)[:20] + b"\xff" * 64 + gzip.compress(MODULE)[84:]
    url = f"http://127.0.0.1:{module_server}/corrupt.wasm.gz"
    apply(stack, url)
    assert [r.status for r in burst(stack.port, 2)] == [403, 403]
    assert "bad gzip data" in stack.control_plane.module(url)["reason"]
