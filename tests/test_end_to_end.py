"""The rate-limit tutorial without Kubernetes: YAML files in a directory, the control plane, a real Envoy
in front of a real httpbin."""

from __future__ import annotations

import subprocess
import time

import pytest

from controlplane.processes import controlplane_command
from tests.support import (
    BOTH_PROTOCOLS,
    ORDER_MARKER_WASM,
    RATELIMIT_WASM,
    ROUTER,
    Stack,
    burst,
    http_get,
    wait_for,
    wasm_plugin_yaml,
)

RATELIMIT_FILTER = "extensions.istio.io/wasmplugin/default.ratelimit"


def ratelimit(requests_per_second: int | None = None) -> str:
    config = {"deny_status": 429}
    if requests_per_second is not None:
        config["requests_per_second"] = requests_per_second
    return wasm_plugin_yaml(
        "ratelimit", f"file://{RATELIMIT_WASM}", selector={"app": "httpbin"}, plugin_name="ratelimit", config=config
    )


def statuses(stack: Stack, count: int) -> list[int]:
    # The bucket refills when more than a second has passed since its last refill.
    time.sleep(1.2)
    return [r.status for r in burst(stack.port, count)]


@BOTH_PROTOCOLS
def test_tutorial_plugin_is_applied_changed_and_removed_without_restarting_envoy(stack: Stack) -> None:
    before = burst(stack.port, 5)
    assert [r.status for r in before] == [200] * 5
    assert all("who-am-i" not in r.headers for r in before)

    path = stack.write("ratelimit.yaml", ratelimit())
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the plugin to run")
    time.sleep(1.2)
    responses = burst(stack.port, 3)
    assert [r.status for r in responses] == [200, 200, 429]
    assert [r.headers.get("who-am-i") for r in responses[:2]] == ["wasm-extension"] * 2
    assert responses[2].headers.get("powered-by") == "proxy-wasm-assemblyscript"
    assert stack.listener_filters() == [RATELIMIT_FILTER, ROUTER]

    stack.write("ratelimit.yaml", ratelimit(requests_per_second=3))
    wait_for(
        lambda: '"requests_per_second":3' in str(stack.envoy.extension_configs().get(RATELIMIT_FILTER)),
        what="Envoy to hold the new pluginConfig",
    )
    assert statuses(stack, 4) == [200, 200, 200, 429]

    path.unlink()
    wait_for(lambda: stack.listener_filters() == [ROUTER], what="the plugin to leave the filter chain")
    after = burst(stack.port, 5)
    assert [r.status for r in after] == [200] * 5
    assert all("who-am-i" not in r.headers for r in after)


def test_syntax_error_keeps_the_last_good_config_and_is_reported_with_path_and_line(stack: Stack) -> None:
    path = stack.write("ratelimit.yaml", ratelimit())
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the plugin to run")

    broken = ratelimit(requests_per_second=3).replace("pluginName: ratelimit", "pluginName: [ratelimit")
    broken_line = broken.splitlines().index("  pluginName: [ratelimit") + 1
    stack.write("ratelimit.yaml", broken)
    wait_for(
        lambda: any(e.startswith(f"{path}:") for e in stack.control_plane.status()["errors"]),
        what="the error to be reported",
    )
    errors = [e for e in stack.control_plane.status()["errors"] if e.startswith(f"{path}:")]
    assert len(errors) == 1
    line = int(errors[0].split(":")[1])
    assert broken_line <= line <= broken_line + 1, errors
    assert "syntax error" in errors[0]
    assert f"{path}:{line}: " in stack.control_plane.process.log()

    assert statuses(stack, 3) == [200, 200, 429], "the last good version (2 per second) keeps serving"
    served = {s["name"]: s for s in stack.control_plane.status()["serving"]}
    assert served["ratelimit"]["last_good"] is True

    result = subprocess.run(controlplane_command("validate", str(stack.config_dir)), capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{path}:{line}: " in result.stderr

    stack.write("ratelimit.yaml", ratelimit(requests_per_second=3))
    wait_for(lambda: not stack.control_plane.status()["errors"], what="the error to clear")
    wait_for(
        lambda: '"requests_per_second":3' in str(stack.envoy.extension_configs().get(RATELIMIT_FILTER)),
        what="the fixed file to apply",
    )
    assert statuses(stack, 4) == [200, 200, 200, 429]


@BOTH_PROTOCOLS
@pytest.mark.parametrize(("fail_strategy", "expected"), [("FAIL_CLOSE", 403), ("FAIL_OPEN", 200)])
def test_unavailable_module_is_handled_by_its_fail_strategy(stack: Stack, fail_strategy: str, expected: int) -> None:
    stack.write(
        "remote.yaml",
        wasm_plugin_yaml(
            "remote",
            "oci://registry.invalid/plugins/remote:1.0",
            selector={"app": "httpbin"},
            fail_strategy=fail_strategy,
        ),
    )
    name = "extensions.istio.io/wasmplugin/default.remote"
    wait_for(
        lambda: name in stack.listener_filters() and name in stack.envoy.extension_configs(), what="the stand-in filter"
    )
    assert [r.status for r in burst(stack.port, 3)] == [expected] * 3
    # A FAIL_OPEN stand-in serves while the module is still being fetched: wait for the fetch to fail.
    module = wait_for(
        lambda: (lambda m: m if m["state"] != "fetching" else None)(
            stack.control_plane.module("oci://registry.invalid/plugins/remote:1.0")
        ),
        what="the fetch to fail",
    )
    assert module["state"] == "failed" and "registry.invalid/plugins/remote:1.0" in module["reason"]


@BOTH_PROTOCOLS
def test_two_plugins_with_different_modules_each_run_their_own(stack: Stack) -> None:
    stack.write("ratelimit.yaml", ratelimit(requests_per_second=50))
    stack.write(
        "marker.yaml",
        wasm_plugin_yaml(
            "marker",
            f"file://{ORDER_MARKER_WASM}",
            selector={"app": "httpbin"},
            plugin_name="marker",
            config={"name": "m1"},
        ),
    )

    def both_ran() -> bool:
        headers = http_get(stack.port).headers
        return headers.get("who-am-i") == "wasm-extension" and headers.get("x-plugin-order") == "m1"

    wait_for(both_ran, what="each plugin running its own module")
