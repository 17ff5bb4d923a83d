"""Plugins pulled from a real registry and run by a real Envoy: observed as Envoy's answers, not only in
the control plane's status. A wrong sha256 under both fail strategies, a private registry behind TLS with a
login from a Docker config or a pull Secret, a registry that is down and comes back, and a restart of the
control plane with a warm cache and no registry."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.registry import LocalCa, Registry, docker_config_json, start_registry
from tests.support import (
    ORDER_MARKER_WASM,
    RATELIMIT_WASM,
    Process,
    Stack,
    burst,
    http_get,
    start_control_plane,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
)
from tests.test_oci import LOGIN, MODULE_SHA256

FILTER = "extensions.istio.io/wasmplugin/default.limit"
MODULE = RATELIMIT_WASM.read_bytes()


def limit_plugin(url: str, sha256: str = "", fail_strategy: str = "", pull_secret: str = "") -> str:
    text = wasm_plugin_yaml(
        "limit",
        url,
        selector={"app": "httpbin"},
        plugin_name="ratelimit",
        fail_strategy=fail_strategy,
        config={"requests_per_second": 2, "deny_status": 429},
        sha256=sha256,
    )
    return text.replace("spec:\n", f"spec:\n  imagePullSecret: {pull_secret}\n") if pull_secret else text


def assert_plugin_runs(stack: Stack) -> None:
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the pulled plugin to run")
    time.sleep(1.2)  # the plugin's bucket refills when more than a second has passed
    responses = burst(stack.port, 3)
    assert [r.status for r in responses] == [200, 200, 429]
    assert responses[0].headers.get("who-am-i") == "wasm-extension"


def stand_in_answers(stack: Stack, expected: int) -> None:
    wait_for(lambda: FILTER in stack.envoy.extension_configs(), what="the stand-in filter in Envoy")
    responses = burst(stack.port, 3)
    assert [r.status for r in responses] == [expected] * 3
    assert all("who-am-i" not in r.headers for r in responses)


def test_a_plugin_pinned_by_manifest_digest_runs_and_envoy_checks_the_module_digest(
    make_stack: Callable[..., Stack], registry: Registry
) -> None:
    manifest_digest = registry.push("envoy/limit", "1.0", MODULE, "oci-index").removeprefix("sha256:")
    stack = make_stack("--insecure-registry", registry.host)
    stack.write("limit.yaml", limit_plugin(f"{registry.host}/envoy/limit:1.0", sha256=manifest_digest))
    assert_plugin_runs(stack)
    vm_config = stack.envoy.extension_configs()[FILTER]["config"]["vm_config"]
    inline = base64.b64decode(vm_config["code"]["local"]["inline_bytes"])
    assert hashlib.sha256(inline).hexdigest() == MODULE_SHA256, "Envoy gets the module, not the manifest"
    assert vm_config["vm_id"] == MODULE_SHA256


@pytest.mark.parametrize(("fail_strategy", "expected"), [("FAIL_CLOSE", 403), ("FAIL_OPEN", 200)])
def test_a_wrong_sha256_is_handled_by_the_fail_strategy(
    make_stack: Callable[..., Stack], registry: Registry, fail_strategy: str, expected: int
) -> None:
    registry.push("envoy/limit", "1.0", MODULE)
    stack = make_stack("--insecure-registry", registry.host)
    url = f"oci://{registry.host}/envoy/limit:1.0"
    stack.write("limit.yaml", limit_plugin(url, sha256="0" * 64, fail_strategy=fail_strategy))
    stand_in_answers(stack, expected)
    # A FAIL_OPEN stand-in serves while the module is still being fetched: wait for the fetch to fail.
    module = wait_for(lambda: (m := stack.control_plane.module(url))["state"] == "failed" and m, what="the failure")
    assert "sha256 mismatch" in module["reason"]


@pytest.mark.parametrize("login_from", ["docker-config", "pull-secret"])
def test_a_private_registry_with_tls_and_a_login(
    make_stack: Callable[..., Stack], tmp_path: Path, login_from: str
) -> None:
    ca = LocalCa.create(tmp_path)
    private = start_registry(tmp_path / "private-registry", tls=ca, login=LOGIN)
    try:
        private.push("private/limit", "1.0", MODULE)
        docker_config = docker_config_json(private.host, *LOGIN)
        flags = ["--registry-ca", str(ca.ca_file)]
        if login_from == "docker-config":
            (tmp_path / "docker").mkdir()
            (tmp_path / "docker" / "config.json").write_text(docker_config)
            flags += ["--docker-config", str(tmp_path / "docker")]
        stack = make_stack(*flags)
        if login_from == "pull-secret":
            encoded = base64.b64encode(docker_config.encode()).decode()
            stack.write("secret.yaml", pull_secret("registry-login", encoded))
        secret = "registry-login" if login_from == "pull-secret" else ""
        stack.write("limit.yaml", limit_plugin(f"oci://{private.host}/private/limit:1.0", pull_secret=secret))
        assert_plugin_runs(stack)
        assert LOGIN[1] not in stack.control_plane.process.log()
    finally:
        private.stop()


def pull_secret(name: str, encoded_docker_config: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": encoded_docker_config},
        }
    )


def test_a_registry_that_is_down_gets_the_stand_in_until_it_comes_back(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    flaky = start_registry(tmp_path / "flaky-registry")
    flaky.push("envoy/limit", "1.0", MODULE)
    flaky.stop()
    stack = make_stack("--insecure-registry", flaky.host)
    url = f"oci://{flaky.host}/envoy/limit:1.0"
    stack.write("limit.yaml", limit_plugin(url))
    stand_in_answers(stack, 403)
    module = stack.control_plane.module(url)
    assert "Connection refused" in module["reason"]
    assert "next_retry_at" in module
    wait_for(lambda: stack.control_plane.module(url)["next_retry_at"], what="a scheduled retry in /debug/config")
    flaky.start()
    try:
        assert_plugin_runs(stack)
        assert "is available now" in stack.control_plane.process.log()
    finally:
        flaky.stop()


def test_the_repull_interval_brings_a_new_module_under_the_same_tag_to_envoy(
    make_stack: Callable[..., Stack], registry: Registry
) -> None:
    """No change to the directory: the interval alone pulls the tag again. While the tag is unchanged the
    re-pulls download no blob; then the ratelimit module is replaced by the order-marker one."""
    registry.push("envoy/moving", "stable", MODULE)
    url = f"oci://{registry.host}/envoy/moving:stable"
    config = {"requests_per_second": 2, "deny_status": 429, "name": "repulled"}
    text = wasm_plugin_yaml("limit", url, selector={"app": "httpbin"}, plugin_name="ratelimit", config=config)
    stack = make_stack("--insecure-registry", registry.host, "--repull-interval", "0.2")
    stack.write("limit.yaml", text.replace("spec:\n", "spec:\n  imagePullPolicy: Always\n"))
    assert_plugin_runs(stack)
    log = stack.control_plane.process.log
    wait_for(lambda: "unchanged in the registry" in log(), what="a re-pull of the unchanged tag")
    assert registry.requests_logged("GET", "/v2/envoy/moving/blobs/") == 1
    registry.push("envoy/moving", "stable", ORDER_MARKER_WASM.read_bytes())
    marker = wait_for(
        lambda: http_get(stack.port).headers.get("x-plugin-order"), timeout=30, what="the new module to run"
    )
    assert marker == "repulled"
    assert "who-am-i" not in http_get(stack.port).headers, "the ratelimit module still runs"


@pytest.mark.parametrize("reference", ["digest", "latest"])
def test_a_restart_with_a_warm_cache_serves_without_the_registry(
    make_stack: Callable[..., Stack], tmp_path: Path, processes: list[Process], reference: str
) -> None:
    """Pinned by digest, and `:latest` (pulled `Always`): both serve the cached module, as a running server
    keeps serving when a re-pull fails, rather than the deny-all stand-in."""
    registry = start_registry(tmp_path / "registry")
    try:
        digest = registry.push("envoy/limit", "latest", MODULE)
        image = f"envoy/limit@{digest}" if reference == "digest" else "envoy/limit:latest"
        stack = make_stack("--insecure-registry", registry.host)
        stack.write("limit.yaml", limit_plugin(f"oci://{registry.host}/{image}"))
        assert_plugin_runs(stack)
    finally:
        registry.stop()
    stack.control_plane.process.stop()
    stack.envoy.process.stop()

    control_plane = start_control_plane(processes, stack.config_dir, tmp_path, "--insecure-registry", registry.host)
    envoy = start_envoy(processes, tmp_path, control_plane.xds_port, "httpbin-2", labels={"app": "httpbin"})
    assert_plugin_runs(Stack(stack.config_dir, control_plane, envoy, stack.port))
    assert "from the cache" in control_plane.process.log()
