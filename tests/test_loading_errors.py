"""Bad input: every error names `path:line: field: reason` at the line the user wrote, every problem of a
document is reported, and an invalid document is not served."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.loading import SHA, documents, line_of, load, sidecar, wasm_plugin, write

# libyaml, which the loader uses where PyYAML has it, words this error differently from pure-Python PyYAML.
MAPPING_NOT_ALLOWED = "in this context" if yaml.__with_libyaml__ else "here"


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


def test_a_document_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "- just\n- a list\n")
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:1: <document>: expected a mapping with apiVersion, kind, metadata, spec"
    ]
