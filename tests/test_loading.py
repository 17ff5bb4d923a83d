"""The config loader against real files: discovery, parsing of every field, errors that point at the
line the user wrote, and the last good version kept while a file is broken."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from controlplane.model import (
    EgressHost,
    EgressPort,
    EnvVar,
    FailStrategy,
    IngressPort,
    Phase,
    PluginType,
    PullPolicy,
    Sidecar,
    SourceRef,
    TargetRef,
    TrafficSelector,
    WasmPlugin,
    WorkloadMode,
)
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.documents import DocumentKey

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef" * 4
ERROR_LINE = re.compile(r"^\S+:\d+: \S+: .+$")
# The Secret that test_every_wasm_plugin_field_is_parsed's imagePullSecret names.
PULL_SECRET = """\
apiVersion: v1
kind: Secret
metadata: {name: pull-secret, namespace: apps}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths": {}}'
"""

# libyaml, which the loader uses where PyYAML has it, words this error differently from pure-Python PyYAML.
MAPPING_NOT_ALLOWED = "in this context" if yaml.__with_libyaml__ else "here"


def write(root: Path, name: str, text: str) -> Path:
    """Writes `text` (dedented) to `root/name`, creating folders; returns the path."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def wasm_plugin(
    spec: str,
    name: str = "plugin",
    namespace: str | None = "default",
    api_version: str = "extensions.istio.io/v1alpha1",
) -> str:
    """A WasmPlugin document; `spec` is the YAML body of its spec."""
    namespace_line = f"  namespace: {namespace}\n" if namespace else ""
    return (
        f"apiVersion: {api_version}\nkind: WasmPlugin\nmetadata:\n  name: {name}\n{namespace_line}"
        f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n"
    )


def sidecar(
    spec: str, name: str = "sidecar", namespace: str = "default", api_version: str = "networking.istio.io/v1"
) -> str:
    return (
        f"apiVersion: {api_version}\nkind: Sidecar\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n"
    )


def documents(*texts: str) -> str:
    return "---\n".join(texts)


def load(root: Path, previous: LoadedDirectory | None = None) -> LoadedDirectory:
    return load_directory([str(root)], previous)


def line_of(text: str, needle: str, occurrence: int = 0) -> int:
    """The 1-based line of the `occurrence`-th line of `text` that contains `needle`."""
    return [index for index, line in enumerate(text.splitlines(), 1) if needle in line][occurrence]


def only_plugin(loaded: LoadedDirectory) -> WasmPlugin:
    assert loaded.errors == ()
    assert len(loaded.config.plugins) == 1
    return loaded.config.plugins[0]


def plugin_named(loaded: LoadedDirectory, name: str, namespace: str = "default") -> WasmPlugin:
    return next(p for p in loaded.config.plugins if (p.namespace, p.name) == (namespace, name))


def plugin_key(name: str, namespace: str = "default") -> DocumentKey:
    return DocumentKey("WasmPlugin", namespace, name)


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "validate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- finding files and documents -------------------------------------------------------------------------


def test_every_document_of_a_multi_document_file_is_loaded(tmp_path: Path) -> None:
    text = documents(
        wasm_plugin("url: oci://example.com/a:1", name="a"),
        wasm_plugin("url: oci://example.com/b:1", name="b"),
        sidecar("ingress:\n- port: {number: 8080}\n  defaultEndpoint: 127.0.0.1:9000"),
    )
    write(tmp_path, "all.yaml", text)
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert [p.name for p in loaded.config.plugins] == ["a", "b"]
    assert [s.name for s in loaded.config.sidecars] == ["sidecar"]
    assert [p.source.line for p in loaded.config.plugins] == [1, line_of(text, "apiVersion:", 1)]


def test_yaml_and_yml_files_in_nested_folders_are_found_and_hidden_ones_skipped(tmp_path: Path) -> None:
    write(tmp_path, "top.yaml", wasm_plugin("url: oci://example.com/a:1", name="top"))
    write(tmp_path, "team/one/nested.yml", wasm_plugin("url: oci://example.com/a:1", name="nested"))
    write(tmp_path, "team/deep/er/deeper.yaml", wasm_plugin("url: oci://example.com/a:1", name="deeper"))
    write(tmp_path, ".hidden.yaml", wasm_plugin("url: oci://example.com/a:1", name="hidden-file"))
    write(tmp_path, ".git/config.yaml", wasm_plugin("url: oci://example.com/a:1", name="hidden-dir"))
    write(tmp_path, "team/..data/cm.yaml", wasm_plugin("url: oci://example.com/a:1", name="configmap-data"))
    write(tmp_path, "notes.txt", wasm_plugin("url: oci://example.com/a:1", name="not-yaml"))
    write(tmp_path, "broken.yaml.swp", "::: not yaml at all")
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comments-only.yml", "# nothing here yet\n---\n")
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert sorted(p.name for p in loaded.config.plugins) == ["deeper", "nested", "top"]
    assert sorted(Path(f).relative_to(tmp_path).as_posix() for f in loaded.files) == [
        "comments-only.yml",
        "empty.yaml",
        "team/deep/er/deeper.yaml",
        "team/one/nested.yml",
        "top.yaml",
    ]


def test_other_kinds_are_skipped_without_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        "app.yaml",
        documents(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  bogus: true\n",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n",
            wasm_plugin("url: oci://example.com/a:1"),
        ),
    )
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert [p.name for p in loaded.config.plugins] == ["plugin"]
    assert len(loaded.served) == 1


@pytest.mark.parametrize(
    "api_version", ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]
)
def test_sidecar_is_read_in_every_networking_api_version(tmp_path: Path, api_version: str) -> None:
    path = write(
        tmp_path,
        "sidecar.yaml",
        sidecar(
            """
        workloadSelector:
          labels:
            app: web
        ingress:
        - port:
            number: 8080
            protocol: http
            name: web
          defaultEndpoint: 127.0.0.1:9000
        - port:
            number: 9090
            protocol: TCP
          bind: 127.0.0.1
          defaultEndpoint: unix:///var/run/app.sock
        egress:
        - hosts: ["./*"]
        """,
            api_version=api_version,
        ),
    )
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert loaded.config.sidecars == (
        Sidecar(
            namespace="default",
            name="sidecar",
            workload_labels=(("app", "web"),),
            ingress=(
                IngressPort(8080, "HTTP", "web", "", "127.0.0.1:9000"),
                IngressPort(9090, "TCP", "", "127.0.0.1", "unix:///var/run/app.sock"),
            ),
            source=SourceRef(str(path), 1),
            egress=(EgressPort(0, "", "", "127.0.0.1", (EgressHost(".", "*"),)),),
        ),
    )


def test_sidecar_without_workload_selector_is_namespace_wide(tmp_path: Path) -> None:
    write(tmp_path, "sidecar.yaml", sidecar("ingress:\n- port: {number: 80}\n  defaultEndpoint: app:8080"))
    (value,) = load(tmp_path).config.sidecars
    assert value.workload_labels is None
    assert value.ingress == (IngressPort(80, "", "", "", "app:8080"),)


# --- WasmPlugin fields -------------------------------------------------------------------------------------


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


# --- errors: path:line: field: reason ----------------------------------------------------------------------

ErrorCase = tuple[str, str, int, str, str]
"""(document text, needle of the line the error belongs to, which such line, field, reason)"""

ERROR_CASES: dict[str, ErrorCase] = {
    "yaml syntax": (
        wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN: again"),
        "phase: AUTHN: again",
        0,
        "<yaml>",
        f"syntax error: mapping values are not allowed {MAPPING_NOT_ALLOWED}",
    ),
    "yaml syntax in a later document": (
        documents(
            wasm_plugin("url: oci://example.com/a:1", name="a"),
            wasm_plugin("url: oci://example.com/a:1\npluginName: x: y", name="b"),
        ),
        "pluginName: x: y",
        0,
        "<yaml>",
        f"syntax error: mapping values are not allowed {MAPPING_NOT_ALLOWED}",
    ),
    "unknown field": (
        wasm_plugin("url: oci://example.com/a:1\npluginname: filter"),
        "pluginname:",
        0,
        "spec.pluginname",
        "unknown field; did you mean 'pluginName'?",
    ),
    "unknown nested field": (
        wasm_plugin("url: oci://example.com/a:1\nvmConfig:\n  env:\n  - name: A\n    valueFom: HOST"),
        "valueFom:",
        0,
        "spec.vmConfig.env[0].valueFom",
        "unknown field; did you mean 'valueFrom'?",
    ),
    "bad enum": (
        wasm_plugin("url: oci://example.com/a:1\nphase: AUTHX"),
        "phase: AUTHX",
        0,
        "spec.phase",
        "unknown value 'AUTHX'; expected one of UNSPECIFIED_PHASE, AUTHN, AUTHZ, STATS",
    ),
    "bad nested enum": (
        wasm_plugin("url: oci://example.com/a:1\nmatch:\n- ports: [{number: 80}]\n- mode: SERVERS"),
        "mode: SERVERS",
        0,
        "spec.match[1].mode",
        "unknown value 'SERVERS'; expected one of UNDEFINED, CLIENT, SERVER, CLIENT_AND_SERVER",
    ),
    "wrong type": (
        wasm_plugin("url: oci://example.com/a:1\npriority: high"),
        "priority: high",
        0,
        "spec.priority",
        "expected an integer, got a string",
    ),
    "wrong type for a string": (
        wasm_plugin("url: oci://example.com/a:1\npluginName: [a, b]"),
        "pluginName:",
        0,
        "spec.pluginName",
        "expected a string, got a list",
    ),
    "sha256 too short": (
        wasm_plugin("url: oci://example.com/a:1\nsha256: abc123"),
        "sha256:",
        0,
        "spec.sha256",
        "must be 64 lowercase hex characters",
    ),
    "sha256 upper case": (
        wasm_plugin(f"url: oci://example.com/a:1\nsha256: {SHA.upper()}"),
        "sha256:",
        0,
        "spec.sha256",
        "must be 64 lowercase hex characters",
    ),
    "url missing": (
        wasm_plugin("pluginName: filter"),
        "spec:",
        0,
        "spec.url",
        "required",
    ),
    "url scheme": (
        wasm_plugin("pluginName: filter\nurl: ftp://example.com/a.wasm"),
        "url: ftp://",
        0,
        "spec.url",
        "scheme must be one of oci, file, http, https",
    ),
    "selector and targetRefs": (
        wasm_plugin(
            "url: oci://example.com/a:1\nselector:\n  matchLabels: {app: web}\n"
            "targetRefs:\n- group: gateway.networking.k8s.io\n  kind: Gateway\n  name: edge"
        ),
        "spec:",
        0,
        "spec",
        "only one of selector, targetRef and targetRefs may be set",
    ),
    "sha256 differs from the url digest": (
        wasm_plugin(f"url: oci://example.com/a@sha256:{'0' * 64}\nsha256: {SHA}"),
        f"sha256: {SHA}",
        0,
        "spec.sha256",
        f"does not match the digest in url (sha256:{'0' * 64})",
    ),
    "label value not a string": (
        wasm_plugin("url: oci://example.com/a:1\nselector:\n  matchLabels:\n    app: web\n    tier: 1"),
        "tier: 1",
        0,
        "spec.selector.matchLabels.tier",
        "expected a string, got an integer",
    ),
    "targetRefs entry without a name": (
        wasm_plugin(
            "url: oci://example.com/a:1\ntargetRefs:\n- group: gateway.networking.k8s.io\n  kind: Gateway\n  name: edge\n"
            "- group: gateway.networking.k8s.io\n  kind: Gateway"
        ),
        "- group: gateway.networking.k8s.io",
        1,
        "spec.targetRefs[1]",
        "kind and name are required",
    ),
    "targetRef without kind and name": (
        wasm_plugin("url: oci://example.com/a:1\ntargetRef:\n  group: gateway.networking.k8s.io"),
        "targetRef:",
        0,
        "spec.targetRef",
        "kind and name are required",
    ),
    "targetRefs entry in another namespace": (
        wasm_plugin(
            "url: oci://example.com/a:1\ntargetRefs:\n- group: gateway.networking.k8s.io\n  kind: Gateway\n  name: edge\n  namespace: apps"
        ),
        "namespace: apps",
        0,
        "spec.targetRefs[0].namespace",
        "cross namespace referencing is not currently supported",
    ),
    "HOST env with a value": (
        wasm_plugin(
            "url: oci://example.com/a:1\nvmConfig:\n  env:\n  - name: A\n    value: x\n"
            "  - name: B\n    valueFrom: HOST\n    value: z"
        ),
        "value: z",
        0,
        "spec.vmConfig.env[1].value",
        "may only be set when valueFrom is INLINE",
    ),
    "duplicate env name": (
        wasm_plugin(
            "url: oci://example.com/a:1\nvmConfig:\n  env:\n  - name: TOKEN\n    value: a\n"
            "  - name: TOKEN\n    value: b"
        ),
        "name: TOKEN",
        1,
        "spec.vmConfig.env[1].name",
        "duplicate variable 'TOKEN'",
    ),
    "match port 0": (
        wasm_plugin("url: oci://example.com/a:1\nmatch:\n- mode: SERVER\n  ports:\n  - number: 80\n  - number: 0"),
        "number: 0",
        0,
        "spec.match[0].ports[1].number",
        "must be 1 to 65535",
    ),
    "duplicate yaml key": (
        wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN\npriority: 1\nphase: AUTHZ"),
        "phase: AUTHZ",
        0,
        "spec.phase",
        "duplicate key",
    ),
    "wrong apiVersion for WasmPlugin": (
        wasm_plugin("url: oci://example.com/a:1", api_version="extensions.istio.io/v1beta1"),
        "apiVersion:",
        0,
        "apiVersion",
        "'extensions.istio.io/v1beta1' is not supported for WasmPlugin; use extensions.istio.io/v1alpha1",
    ),
    "sidecar ingress without defaultEndpoint": (
        sidecar(
            "ingress:\n- port:\n    number: 8080\n    protocol: HTTP\n- port:\n    number: 9090"
            "\n  defaultEndpoint: 127.0.0.1:9000"
        ),
        "- port:",
        0,
        "spec.ingress[0].defaultEndpoint",
        "required: where this port's traffic is sent",
    ),
    "sidecar bad defaultEndpoint": (
        sidecar("ingress:\n- port:\n    number: 8080\n  defaultEndpoint: localhost"),
        "defaultEndpoint:",
        0,
        "spec.ingress[0].defaultEndpoint",
        "'localhost' is not HOST:PORT or unix://PATH",
    ),
    "sidecar defaultEndpoint port out of range": (
        sidecar("ingress:\n- port:\n    number: 8080\n  defaultEndpoint: 127.0.0.1:70000"),
        "defaultEndpoint:",
        0,
        "spec.ingress[0].defaultEndpoint",
        "'127.0.0.1:70000' is not HOST:PORT or unix://PATH",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_error_names_path_line_field_and_reason(tmp_path: Path, case: str) -> None:
    text, needle, occurrence, field, reason = ERROR_CASES[case]
    path = write(tmp_path, "config.yaml", text)
    loaded = load(tmp_path)
    expected = f"{path}:{line_of(text, needle, occurrence)}: {field}: {reason}"
    assert [str(e) for e in loaded.errors] == [expected]


@pytest.mark.parametrize("case", ["unknown field", "bad enum", "url missing", "selector and targetRefs"])
def test_an_invalid_document_is_not_served(tmp_path: Path, case: str) -> None:
    write(tmp_path, "config.yaml", ERROR_CASES[case][0])
    loaded = load(tmp_path)
    assert loaded.config.plugins == ()
    assert loaded.served == {}


def test_every_problem_of_a_document_is_reported(tmp_path: Path) -> None:
    text = wasm_plugin("url: oci://example.com/a:1\nphase: LATE\npriority: high\nfailStrategy: FAIL")
    write(tmp_path, "config.yaml", text)
    errors = load(tmp_path).errors
    assert [(e.line, e.field) for e in errors] == [
        (line_of(text, "phase:"), "spec.phase"),
        (line_of(text, "priority:"), "spec.priority"),
        (line_of(text, "failStrategy:"), "spec.failStrategy"),
    ]


def test_the_same_object_in_two_files_is_an_error_naming_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    second_text = documents(
        wasm_plugin("url: oci://example.com/other:1", name="other"),
        wasm_plugin("url: oci://example.com/a:1\npriority: 2"),
    )
    second = write(tmp_path, "b/b.yaml", second_text)
    loaded = load(tmp_path)
    (error,) = loaded.errors
    assert (error.path, error.line, error.field) == (
        str(second),
        line_of(second_text, "apiVersion:", 1),
        "metadata.name",
    )
    assert error.reason.startswith("WasmPlugin default/plugin is declared more than once")
    assert f"{first}:1" in error.reason and f"{second}:{error.line}" in error.reason
    assert sorted(p.name for p in loaded.config.plugins) == ["other", "plugin"]
    assert plugin_named(loaded, "plugin").priority == 1


def test_a_new_duplicate_does_not_displace_the_served_object(tmp_path: Path) -> None:
    original = write(tmp_path, "z.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    first = load(tmp_path)
    copy = write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 2"))
    second = load(tmp_path, first)
    assert [(e.path, e.field) for e in second.errors] == [(str(copy), "metadata.name")]
    assert plugin_named(second, "plugin").priority == 1
    assert second.served[plugin_key("plugin")].path == str(original)


def test_a_document_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "- just\n- a list\n")
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:1: <document>: expected a mapping with apiVersion, kind, metadata, spec"
    ]


# --- the last good version -------------------------------------------------------------------------------


def test_a_file_with_a_syntax_error_keeps_its_last_good_values(tmp_path: Path) -> None:
    broken = write(
        tmp_path,
        "a.yaml",
        documents(
            wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN", name="a1"),
            wasm_plugin("url: oci://example.com/a:1\npriority: 3", name="a2"),
        ),
    )
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1\nphase: STATS", name="b"))
    first = load(tmp_path)
    assert first.errors == ()

    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:2\nphase: AUTHZ: oops", name="a1"))
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1\nphase: AUTHZ", name="b"))
    second = load(tmp_path, first)

    assert [(e.path, e.field) for e in second.errors] == [(str(broken), "<yaml>")]
    assert plugin_named(second, "a1") == plugin_named(first, "a1")
    assert plugin_named(second, "a2").priority == 3
    assert second.served[plugin_key("a1")].stale is True
    assert second.served[plugin_key("a2")].stale is True
    assert plugin_named(second, "b").phase is Phase.AUTHZ
    assert second.served[plugin_key("b")].stale is False


def test_an_invalid_document_keeps_its_last_good_value_while_its_neighbours_change(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        documents(
            wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN", name="a1"),
            wasm_plugin("url: oci://example.com/a:1\npriority: 3", name="a2"),
        ),
    )
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1", name="b"))
    first = load(tmp_path)

    write(
        tmp_path,
        "a.yaml",
        documents(
            wasm_plugin("url: oci://example.com/a:2\nphase: AUTHX", name="a1"),
            wasm_plugin("url: oci://example.com/a:1\npriority: 7", name="a2"),
        ),
    )
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:2", name="b"))
    second = load(tmp_path, first)

    assert [e.field for e in second.errors] == ["spec.phase"]
    assert plugin_named(second, "a1") == plugin_named(first, "a1")
    assert second.served[plugin_key("a1")].stale is True
    assert plugin_named(second, "a2").priority == 7
    assert second.served[plugin_key("a2")].stale is False
    assert plugin_named(second, "b").url == "oci://example.com/b:2"


def test_fixing_a_broken_file_serves_the_new_version(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    first = load(tmp_path)
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: NOPE", name="a"))
    second = load(tmp_path, first)
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: STATS", name="a"))
    third = load(tmp_path, second)
    assert third.errors == ()
    assert plugin_named(third, "a").phase is Phase.STATS
    assert third.served[plugin_key("a")].stale is False


def test_a_new_invalid_document_has_no_last_good_version(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    first = load(tmp_path)
    write(tmp_path, "b.yaml", wasm_plugin("phase: AUTHN", name="b"))
    second = load(tmp_path, first)
    assert [p.name for p in second.config.plugins] == ["a"]
    assert plugin_key("b") not in second.served


def test_a_removed_file_takes_its_documents_with_it(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    removed = write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1", name="b"))
    first = load(tmp_path)
    removed.unlink()
    assert [p.name for p in load(tmp_path, first).config.plugins] == ["a"]


def test_a_file_that_gains_a_duplicate_key_keeps_its_last_good_value(tmp_path: Path) -> None:
    """A file reported as bad keeps serving its last good version, whatever made it bad."""
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN", name="a"))
    first = load(tmp_path)
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN\nphase: STATS", name="a"))
    second = load(tmp_path, first)
    assert [e.reason for e in second.errors] == ["duplicate key"]
    assert plugin_named(second, "a").phase is Phase.AUTHN
    assert second.served[plugin_key("a")].stale is True


# --- controlplane validate --------------------------------------------------------------------------------


def test_validate_accepts_a_valid_directory(tmp_path: Path) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin("url: oci://example.com/a:1"))
    write(tmp_path, "sidecars/web.yml", sidecar("ingress:\n- port: {number: 80}\n  defaultEndpoint: 127.0.0.1:8080"))
    result = validate(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 1 WasmPlugin(s), 1 Sidecar(s) in 2 file(s)"


def test_validate_reports_every_error_and_exits_1(tmp_path: Path) -> None:
    bad_enum = wasm_plugin("url: oci://example.com/a:1\nfailStrategy: FAIL_SOMETIMES", name="a")
    no_url = wasm_plugin("pluginName: b", name="b")
    first = write(tmp_path, "a.yaml", bad_enum)
    second = write(tmp_path, "nested/b.yml", no_url)
    result = validate(str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert (
        f"{first}:{line_of(bad_enum, 'failStrategy:')}: spec.failStrategy: unknown value 'FAIL_SOMETIMES'; "
        "expected one of FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD" in lines
    )
    assert f"{second}:{line_of(no_url, 'spec:')}: spec.url: required" in lines
    assert all(ERROR_LINE.match(line) for line in lines), lines
    assert result.stdout == ""


def test_validate_exits_2_for_a_missing_directory(tmp_path: Path) -> None:
    result = validate(str(tmp_path / "absent"))
    assert result.returncode == 2
    assert str(tmp_path / "absent") in result.stderr


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


# --- roots that are not there -------------------------------------------------------------------------------


def test_a_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    loaded = load(tmp_path / "typo")
    assert [str(e) for e in loaded.errors] == [
        f"{tmp_path / 'typo'}:1: <config-dir>: no such folder or file; what it held keeps serving"
    ]


@pytest.mark.parametrize("how", ["renamed away", "symlink to nothing"])
def test_a_vanished_root_keeps_serving_its_last_good_files(tmp_path: Path, how: str) -> None:
    """As during `rm -rf; mkdir` or a mount that went away: no push that removes every plugin."""
    real = tmp_path / "real"
    write(real, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    write(real, "nested/b.yaml", wasm_plugin("url: oci://example.com/b:1", name="b"))
    root = tmp_path / "config"
    root.symlink_to(real)
    first = load(root)
    assert len(first.config.plugins) == 2
    if how == "renamed away":
        real.rename(tmp_path / "elsewhere")
    else:
        root.unlink()
        root.symlink_to(tmp_path / "nothing")
    second = load(root, first)
    assert [(e.path, e.field) for e in second.errors] == [(str(root), "<config-dir>")]
    assert second.config == first.config
    assert second.served == first.served

    # Back, with one file fewer: read as usual again.
    if how == "renamed away":
        (tmp_path / "elsewhere").rename(real)
    else:
        real.rename(tmp_path / "nothing")
    (root / "nested" / "b.yaml").unlink()
    third = load(root, second)
    assert third.errors == ()
    assert [p.name for p in third.config.plugins] == ["a"]


# --- YAML as Kubernetes reads it -------------------------------------------------------------------------


def test_timestamps_and_non_string_keys_are_read_as_kubernetes_reads_them(tmp_path: Path) -> None:
    """sigs.k8s.io/yaml: go-yaml v2 keeps timestamps as their text, and keys become strings on the way to
    JSON (floats in Go's shortest float32 form)."""
    write(
        tmp_path,
        "plugin.yaml",
        wasm_plugin(
            """
        url: oci://example.com/a:1
        pluginConfig:
          valid_until: 2025-12-31
          at: 2001-12-14t21:59:43.10-05:00
          status_text: {429: too many, 0x1f: hex}
          flags: {true: on, false: off}
          ratios: {1.5: a, 1.0: b, 1000000.0: c, 0.1: d}
          days: {2025-01-01: new year}
        """
        ),
    )
    assert json.loads(only_plugin(load(tmp_path)).plugin_config) == {
        "valid_until": "2025-12-31",
        "at": "2001-12-14t21:59:43.10-05:00",
        "status_text": {"429": "too many", "31": "hex"},
        "flags": {"true": True, "false": False},
        "ratios": {"1.5": "a", "1": "b", "1e+06": "c", "0.1": "d"},
        "days": {"2025-01-01": "new year"},
    }


def test_keys_made_strings_keep_their_lines_and_collide_as_duplicates(tmp_path: Path) -> None:
    text = wasm_plugin("url: oci://example.com/a:1\nselector:\n  matchLabels:\n    app: web\n    2024: 5")
    path = write(tmp_path, "plugin.yaml", text)
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:{line_of(text, '2024: 5')}: spec.selector.matchLabels.2024: expected a string, got an integer"
    ]
    text = wasm_plugin("url: oci://example.com/a:1\npluginConfig:\n  429: a\n  '429': b")
    path = write(tmp_path, "plugin.yaml", text)
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:{line_of(text, chr(39) + '429')}: spec.pluginConfig.429: duplicate key"
    ]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("~", "a mapping key must be a string, number or boolean, not null"),
        ("18446744073709551615", "mapping key 18446744073709551615 does not fit a signed 64-bit integer; quote it"),
    ],
)
def test_keys_kubernetes_cannot_read_are_errors(tmp_path: Path, key: str, reason: str) -> None:
    text = wasm_plugin(f"url: oci://example.com/a:1\npluginConfig:\n  {key}: x")
    path = write(tmp_path, "plugin.yaml", text)
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:{line_of(text, key + ': x')}: <yaml>: syntax error: {reason}"
    ]


# --- target references this control plane cannot act on -------------------------------------------------


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


# --- the same document in two files ----------------------------------------------------------------------


def test_a_fresh_load_serves_the_duplicate_whose_path_sorts_first_and_notes_it_there(tmp_path: Path) -> None:
    later = write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 2"))
    first = write(tmp_path, "a/z.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    loaded = load(tmp_path)
    assert loaded.served[plugin_key("plugin")].path == str(first)
    assert [(e.path, e.field) for e in loaded.errors] == [(str(later), "metadata.name")]
    assert [str(w) for w in loaded.warnings] == [
        f"{first}:1: metadata.name: WasmPlugin default/plugin is also declared in {later}:1; this one serves"
    ]


def test_a_remembered_serving_file_wins_over_path_order(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    remembered = write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 2"))
    loaded = load_directory([str(tmp_path)], None, frozenset(), {plugin_key("plugin"): str(remembered)})
    assert plugin_named(loaded, "plugin").priority == 2
    gone = load_directory([str(tmp_path)], None, frozenset(), {plugin_key("plugin"): str(tmp_path / "gone.yaml")})
    assert plugin_named(gone, "plugin").priority == 1


def test_a_default_endpoint_without_a_host_is_valid_as_in_istio(tmp_path: Path) -> None:
    write(tmp_path, "sidecar.yaml", sidecar("ingress:\n- port: {number: 80}\n  defaultEndpoint: ':8080'"))
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert loaded.config.sidecars[0].ingress[0].default_endpoint == ":8080"
