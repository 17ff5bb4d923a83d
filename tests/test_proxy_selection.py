"""A plugin reaches only the proxies its selector matches."""

from __future__ import annotations

from pathlib import Path

from tests.support import (
    RATELIMIT_WASM,
    ROUTER,
    Process,
    Stack,
    free_port,
    http_get,
    sidecar_yaml,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
)


def test_proxy_whose_labels_match_no_plugin_gets_none(
    stack: Stack, tmp_path: Path, httpbin_port: int, processes: list[Process]
) -> None:
    other_port = free_port()
    stack.write("other-sidecar.yaml", sidecar_yaml("other", other_port, httpbin_port, {"app": "other"}))
    stack.write(
        "ratelimit.yaml",
        wasm_plugin_yaml(
            "ratelimit",
            f"file://{RATELIMIT_WASM}",
            selector={"app": "httpbin"},
            plugin_name="ratelimit",
            config={"requests_per_second": 100},
        ),
    )
    other = start_envoy(processes, tmp_path, stack.control_plane.xds_port, "other-1", labels={"app": "other"})
    wait_for(lambda: http_get(other_port).status == 200, what="the other proxy's listener")
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the plugin on the selected proxy")

    assert other.http_filters(f"inbound|{other_port}") == [ROUTER]
    assert other.extension_configs() == {}
    response = http_get(other_port)
    assert response.status == 200 and "who-am-i" not in response.headers
    assert stack.listener_filters() == ["extensions.istio.io/wasmplugin/default.ratelimit", ROUTER]
