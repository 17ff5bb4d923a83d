"""Plugins run in the order Istio's rules give: phase, then priority, then namespace and name."""

from __future__ import annotations

from tests.support import BOTH_PROTOCOLS, ORDER_MARKER_WASM, ROUTER, Stack, http_get, wait_for, wasm_plugin_yaml

# (file name, plugin name, phase, priority): files are named so that their order is not the filter order.
PLUGINS = [
    ("a.yaml", "stats-high", "STATS", 100),
    ("b.yaml", "authz-unset", "AUTHZ", None),
    ("c.yaml", "authz-negative", "AUTHZ", -5),
    ("d.yaml", "authz-ten", "AUTHZ", 10),
    ("e.yaml", "authn", "AUTHN", None),
    ("f.yaml", "last", "", 1000),
]
EXPECTED = ["authn", "authz-ten", "authz-negative", "authz-unset", "stats-high", "last"]


@BOTH_PROTOCOLS
def test_filters_are_ordered_by_phase_and_priority_in_envoy_and_run_in_that_order(stack: Stack) -> None:
    for file_name, name, phase, priority in PLUGINS:
        stack.write(
            file_name,
            wasm_plugin_yaml(
                name,
                f"file://{ORDER_MARKER_WASM}",
                selector={"app": "httpbin"},
                phase=phase,
                priority=priority,
                plugin_name="order-marker",
                config={"name": name},
            ),
        )
    expected_filters = [f"extensions.istio.io/wasmplugin/default.{name}" for name in EXPECTED] + [ROUTER]
    wait_for(lambda: stack.listener_filters() == expected_filters, what="all six plugins in Envoy's listener")

    def observed() -> tuple[str, str]:
        response = http_get(stack.port, "/headers")
        return response.json()["headers"].get("X-Plugin-Order", ""), response.headers.get("x-plugin-order", "")

    request_order, response_order = wait_for(
        lambda: (lambda o: o if o[0].count(",") == len(EXPECTED) - 1 else None)(observed()),
        what="every plugin to run",
    )
    assert request_order.split(",") == EXPECTED
    # Envoy runs the response path of the filter chain in reverse.
    assert response_order.split(",") == list(reversed(EXPECTED))
