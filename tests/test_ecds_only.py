"""A proxy with hand-written listeners takes only the plugins, over the standalone ECDS service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    ORDER_MARKER_WASM,
    RATELIMIT_WASM,
    REPO,
    ControlPlaneProcess,
    EnvoyProcess,
    Process,
    burst,
    free_port,
    http_get,
    run_envoy,
    start_control_plane,
    wait_for,
    wasm_plugin_yaml,
    write_atomically,
)

EXAMPLE = REPO / "envoy" / "bootstrap-ecds-only.yaml"


def _socket(bootstrap: dict[str, Any], cluster: str) -> dict[str, Any]:
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return endpoint["address"]["socket_address"]


def plugin(url: Path) -> str:
    return wasm_plugin_yaml(
        "ratelimit",
        f"file://{url}",
        selector={"app": "httpbin"},
        plugin_name="ratelimit",
        config={"requests_per_second": 2, "name": "marker"},
    )


def start_ecds_only_envoy(
    processes: list[Process], tmp_path: Path, control_plane: ControlPlaneProcess, httpbin_port: int, api_type: str
) -> tuple[EnvoyProcess, int]:
    """The committed example, pointed at this test's ports."""
    bootstrap = yaml.safe_load(EXAMPLE.read_text())
    listener = bootstrap["static_resources"]["listeners"][0]
    listen_port = free_port()
    listener["address"]["socket_address"]["port_value"] = listen_port
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = free_port()
    _socket(bootstrap, "app")["port_value"] = httpbin_port
    _socket(bootstrap, "xds-grpc")["port_value"] = control_plane.xds_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["config_discovery"]["config_source"]["api_config_source"]["api_type"] = api_type
    return run_envoy(processes, tmp_path, "ecds-only", bootstrap), listen_port


@dataclass
class EcdsOnly:
    config_dir: Path
    control_plane: ControlPlaneProcess
    envoy: EnvoyProcess
    port: int


@pytest.fixture
def ecds_only(tmp_path: Path, httpbin_port: int, processes: list[Process]) -> Callable[..., EcdsOnly]:
    """The rate limiter in a directory, a control plane (given extra `serve` flags), and an Envoy with the
    example bootstrap running it; the ECDS stream's api_type is the first argument."""

    def start(api_type: str, *flags: str) -> EcdsOnly:
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        (config_dir / "ratelimit.yaml").write_text(plugin(RATELIMIT_WASM))
        control_plane = start_control_plane(processes, config_dir, tmp_path, *flags)
        envoy, port = start_ecds_only_envoy(processes, tmp_path, control_plane, httpbin_port, api_type)
        wait_for(lambda: "who-am-i" in http_get(port).headers, what="the plugin over ECDS")
        return EcdsOnly(config_dir, control_plane, envoy, port)

    return start


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_example_bootstrap_takes_the_plugin_over_ecds(api_type: str, ecds_only: Callable[..., EcdsOnly]) -> None:
    stack = ecds_only(api_type)
    assert "extensions.istio.io/wasmplugin/default.ratelimit" in stack.envoy.extension_configs()
    wait_for(lambda: [r.status for r in burst(stack.port, 3)][-1] == 429, what="the rate limit to bite")
    [connection] = stack.control_plane.status("proxies")
    assert connection["protocol"] == ("delta" if api_type == "DELTA_GRPC" else "sotw")
    assert list(connection["types"]) == ["type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"]


@pytest.mark.parametrize("delivery", ["inline", "local"])
def test_a_new_module_applies_to_a_listener_that_never_warms_again(
    delivery: str, tmp_path: Path, ecds_only: Callable[..., EcdsOnly]
) -> None:
    stack = ecds_only("GRPC", "--module-delivery", delivery)
    write_atomically(stack.config_dir / "ratelimit.yaml", plugin(ORDER_MARKER_WASM))
    wait_for(lambda: http_get(stack.port).headers.get("x-plugin-order") == "marker", what="the new module")
    code = stack.envoy.extension_configs()["extensions.istio.io/wasmplugin/default.ratelimit"]["config"]["vm_config"]
    if delivery == "local":
        assert code["code"]["local"]["filename"].startswith(str(tmp_path / "cache"))
    else:
        assert "inline_bytes" in code["code"]["local"]
    assert "who-am-i" not in http_get(stack.port).headers


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_a_deleted_plugin_stops_running_on_a_listener_that_still_names_it(
    api_type: str, ecds_only: Callable[..., EcdsOnly]
) -> None:
    stack = ecds_only(api_type)
    (stack.config_dir / "ratelimit.yaml").unlink()
    wait_for(lambda: "who-am-i" not in http_get(stack.port).headers, what="the plugin to stop")
    assert [r.status for r in burst(stack.port, 5)] == [200] * 5
