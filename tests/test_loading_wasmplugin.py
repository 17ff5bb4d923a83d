"""WasmPlugin documents: every field of Istio's spec with its defaults, url forms, relative file urls, and
target references this control plane cannot act on (valid, with a warning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.model import (
    EnvVar,
    FailStrategy,
    Phase,
    PluginType,
    PullPolicy,
    SourceRef,
    TargetRef,
    TrafficSelector,
    WasmPlugin,
    WorkloadMode,
)
from tests.loading import SHA, line_of, load, only_plugin, validate, wasm_plugin, write

# The Secret that test_every_wasm_plugin_field_is_parsed's imagePullSecret names.
PULL_SECRET = """\
apiVersion: v1
kind: Secret
metadata: {name: pull-secret, namespace: apps}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths": {}}'
"""


def test_every_wasm_plugin_field_is_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "plugin.yaml",
        wasm_plugin(
            f"""
        selector:
          matchLabels:
            app: web
            version: v1
        url: oci://ghcr.io/acme/filter:1.0
        sha256: {SHA}
        imagePullPolicy: Always
        imagePullSecret: pull-secret
        pluginConfig:
          limit: 2
          ratio: 0.5
          header: x-limit
          nested:
            list: [1, 2, 3]
            enabled: true
        pluginName: filter
        phase: AUTHZ
        priority: 10
        failStrategy: FAIL_OPEN
        vmConfig:
          env:
          - name: TOKEN
            value: secret
          - name: POD_NAME
            valueFrom: HOST
          - name: MODE
            valueFrom: INLINE
            value: strict
        match:
        - mode: SERVER
          ports:
          - number: 8080
          - number: 9090
        - mode: CLIENT
        type: NETWORK
        """,
            name="filter",
            namespace="apps",
        ),
    )
    write(tmp_path, "pull-secret.yaml", PULL_SECRET)
    assert only_plugin(load(tmp_path)) == WasmPlugin(
        namespace="apps",
        name="filter",
        selector=(("app", "web"), ("version", "v1")),
        target_refs=(),
        url="oci://ghcr.io/acme/filter:1.0",
        sha256=SHA,
        image_pull_policy=PullPolicy.ALWAYS,
        image_pull_secret="pull-secret",
        plugin_config='{"header":"x-limit","limit":2,"nested":{"enabled":true,"list":[1,2,3]},"ratio":0.5}',
        plugin_name="filter",
        phase=Phase.AUTHZ,
        priority=10,
        fail_strategy=FailStrategy.FAIL_OPEN,
        env=(EnvVar("TOKEN", False, "secret"), EnvVar("POD_NAME", True, ""), EnvVar("MODE", False, "strict")),
        match=(
            TrafficSelector(WorkloadMode.SERVER, (8080, 9090)),
            TrafficSelector(WorkloadMode.CLIENT, ()),
        ),
        type=PluginType.NETWORK,
        source=SourceRef(str(path), 1),
        image_pull_secret_line=line_of(path.read_text(), "imagePullSecret:"),
    )


def test_plugin_config_integers_stay_integers_in_the_json(tmp_path: Path) -> None:
    write(
        tmp_path,
        "plugin.yaml",
        wasm_plugin(
            "url: oci://example.com/a:1\npluginConfig:\n  requests_per_second: 2\n  deny_status: 429\n  big: 10000000000"
        ),
    )
    plugin_config = only_plugin(load(tmp_path)).plugin_config
    assert plugin_config == '{"big":10000000000,"deny_status":429,"requests_per_second":2}'
    assert json.loads(plugin_config)["deny_status"] == 429


def test_defaults_of_a_minimal_plugin(tmp_path: Path) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin("url: oci://example.com/a:1", namespace=None))
    plugin = only_plugin(load(tmp_path))
    assert plugin.namespace == "default"
    assert plugin.phase is Phase.UNSPECIFIED_PHASE
    assert plugin.fail_strategy is FailStrategy.FAIL_CLOSE
    assert plugin.priority is None
    assert plugin.type is PluginType.HTTP
    assert plugin.image_pull_policy is PullPolicy.UNSPECIFIED_POLICY
    assert plugin.selector is None
    assert (plugin.target_refs, plugin.env, plugin.match) == ((), (), ())
    assert (plugin.plugin_config, plugin.plugin_name, plugin.sha256) == ("", "", "")


def test_priority_zero_is_set_not_unset(tmp_path: Path) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 0"))
    assert only_plugin(load(tmp_path)).priority == 0


@pytest.mark.parametrize(
    ("spec_lines", "expected"),
    [
        ("type: HTTP", PluginType.HTTP),
        ("type: UNSPECIFIED_PLUGIN_TYPE", PluginType.HTTP),
        ("type: NETWORK", PluginType.NETWORK),
        ("imagePullPolicy: IfNotPresent", PullPolicy.IF_NOT_PRESENT),
        ("failStrategy: FAIL_RELOAD", FailStrategy.FAIL_RELOAD),
        ("phase: STATS", Phase.STATS),
        ("phase: AUTHN", Phase.AUTHN),
    ],
)
def test_enum_values(tmp_path: Path, spec_lines: str, expected: object) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin(f"url: oci://example.com/a:1\n{spec_lines}"))
    plugin = only_plugin(load(tmp_path))
    assert expected in (plugin.type, plugin.image_pull_policy, plugin.fail_strategy, plugin.phase)


def test_match_without_mode_means_client_and_server(tmp_path: Path) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin("url: oci://example.com/a:1\nmatch:\n- ports: [{number: 80}]"))
    assert only_plugin(load(tmp_path)).match == (TrafficSelector(WorkloadMode.CLIENT_AND_SERVER, (80,)),)


def test_target_refs_default_to_the_plugin_namespace(tmp_path: Path) -> None:
    write(
        tmp_path,
        "plugin.yaml",
        wasm_plugin(
            """
        url: oci://example.com/a:1
        targetRefs:
        - group: gateway.networking.k8s.io
          kind: Gateway
          name: edge
        - group: gateway.networking.k8s.io
          kind: Gateway
          name: other
        """,
            namespace="gateways",
        ),
    )
    assert only_plugin(load(tmp_path)).target_refs == (
        TargetRef("gateway.networking.k8s.io", "Gateway", "edge", "gateways"),
        TargetRef("gateway.networking.k8s.io", "Gateway", "other", "gateways"),
    )


def test_single_target_ref(tmp_path: Path) -> None:
    write(
        tmp_path,
        "plugin.yaml",
        wasm_plugin(
            "url: oci://example.com/a:1\ntargetRef:\n  group: gateway.networking.k8s.io\n  kind: Gateway\n  name: edge"
        ),
    )
    plugin = only_plugin(load(tmp_path))
    assert plugin.target_refs == (TargetRef("gateway.networking.k8s.io", "Gateway", "edge", "default"),)
    assert plugin.selector is None


def test_url_without_scheme_is_accepted_as_oci(tmp_path: Path) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin("url: ghcr.io/acme/filter:1.0"))
    assert only_plugin(load(tmp_path)).url == "ghcr.io/acme/filter:1.0"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file://plugin.wasm", "file://{folder}/plugin.wasm"),
        ("file://modules/plugin.wasm", "file://{folder}/modules/plugin.wasm"),
        ("file://../shared/plugin.wasm", "file://{parent}/shared/plugin.wasm"),
        ("file:///opt/modules/plugin.wasm", "file:///opt/modules/plugin.wasm"),
        ("https://example.com/plugin.wasm", "https://example.com/plugin.wasm"),
    ],
)
def test_relative_file_urls_resolve_against_the_yaml_folder(tmp_path: Path, url: str, expected: str) -> None:
    folder = tmp_path / "teams" / "web"
    write(folder, "plugin.yaml", wasm_plugin(f"url: {url}"))
    plugin = only_plugin(load(tmp_path))
    assert plugin.url == expected.format(folder=folder, parent=folder.parent)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("oci://ghcr.io/Acme/Filter:1", "spec.url: not an OCI image reference"),
        ("ghcr.io/acme/filter@sha256:abc", "spec.url: not an OCI image reference"),
        ("https:///plugin.wasm", "spec.url: has no host"),
        ("file://", "spec.url: has no path"),
    ],
)
def test_url_forms_are_checked_without_the_network(tmp_path: Path, url: str, reason: str) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin(f"url: {url!r}"))
    errors = [str(e) for e in load(tmp_path).errors]
    assert len(errors) == 1 and reason in errors[0], errors


@pytest.mark.integration
def test_target_refs_to_other_kinds_are_valid_with_a_warning(tmp_path: Path) -> None:
    text = wasm_plugin(
        """
        url: oci://example.com/a:1
        targetRefs:
        - group: gateway.networking.k8s.io
          kind: Gateway
          name: edge
        - group: gateway.networking.k8s.io
          kind: GatewayClass
          name: istio
        - kind: Service
          name: reviews
        """
    )
    path = write(tmp_path, "plugin.yaml", text)
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert [p.name for p in loaded.config.plugins] == ["plugin"]
    assert [str(w) for w in loaded.warnings] == [
        f"{path}:{line_of(text, 'kind: GatewayClass')}: spec.targetRefs[1].kind: GatewayClass 'istio' selects no "
        "proxy: only Gateway references are acted on",
        f"{path}:{line_of(text, 'kind: Service')}: spec.targetRefs[2].kind: Service 'reviews' selects no proxy: "
        "only Gateway references are acted on",
    ]
    result = validate(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: {w}" for w in loaded.warnings]


def test_a_single_target_ref_to_a_service_is_noted_in_the_file_status(tmp_path: Path) -> None:
    from controlplane.source.status import file_status

    text = wasm_plugin(
        "url: oci://example.com/a:1\ntargetRef:\n  group: networking.istio.io\n  kind: ServiceEntry\n  name: external"
    )
    path = write(tmp_path, "plugin.yaml", text)
    status = file_status(load(tmp_path))[str(path)]
    assert status["state"] == "applied"
    assert status["notes"] == [
        f"{path}:{line_of(text, 'kind: ServiceEntry')}: spec.targetRef.kind: ServiceEntry 'external' selects no "
        "proxy: only Gateway references are acted on"
    ]
