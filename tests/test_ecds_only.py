"""A proxy with hand-written listeners takes only the plugins, over the standalone ECDS service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    RATELIMIT_WASM,
    REPO,
    Process,
    burst,
    free_port,
    http_get,
    run_envoy,
    start_control_plane,
    wait_for,
    wasm_plugin_yaml,
)

EXAMPLE = REPO / "envoy" / "bootstrap-ecds-only.yaml"


def _socket(bootstrap: dict[str, Any], cluster: str) -> dict[str, Any]:
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return endpoint["address"]["socket_address"]


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_example_bootstrap_takes_the_plugin_over_ecds(
    api_type: str, tmp_path: Path, httpbin_port: int, processes: list[Process]
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "ratelimit.yaml").write_text(
        wasm_plugin_yaml(
            "ratelimit",
            f"file://{RATELIMIT_WASM}",
            selector={"app": "httpbin"},
            plugin_name="ratelimit",
            config={"requests_per_second": 2},
        )
    )
    control_plane = start_control_plane(processes, config_dir, tmp_path)

    bootstrap = yaml.safe_load(EXAMPLE.read_text())
    listener = bootstrap["static_resources"]["listeners"][0]
    listen_port = free_port()
    listener["address"]["socket_address"]["port_value"] = listen_port
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = free_port()
    _socket(bootstrap, "app")["port_value"] = httpbin_port
    _socket(bootstrap, "wasm-modules")["port_value"] = control_plane.http_port
    _socket(bootstrap, "xds-grpc")["port_value"] = control_plane.xds_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["config_discovery"]["config_source"]["api_config_source"]["api_type"] = api_type

    envoy = run_envoy(processes, tmp_path, "ecds-only", bootstrap)
    wait_for(lambda: "who-am-i" in http_get(listen_port).headers, what="the plugin over ECDS")
    assert "extensions.istio.io/wasmplugin/default.ratelimit" in envoy.extension_configs()
    wait_for(lambda: [r.status for r in burst(listen_port, 3)][-1] == 429, what="the rate limit to bite")
    [connection] = control_plane.status("proxies")
    assert connection["protocol"] == ("delta" if api_type == "DELTA_GRPC" else "sotw")
    assert list(connection["types"]) == ["type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"]
