"""The committed bindings in controlplane/api/ are exactly what protos/ generates, and the WasmPlugin
schema carries every field of Istio's WasmPlugin spec."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from controlplane.api import wasmplugin_pb2
from controlplane.api.generate import API_DIR, PROTO_DIR, generate

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")
ISTIO_WASM_PLUGIN_FIELDS = {
    "selector",
    "targetRef",
    "targetRefs",
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "verificationKey",
    "pluginConfig",
    "pluginName",
    "phase",
    "priority",
    "failStrategy",
    "vmConfig",
    "match",
    "type",
}


def generated_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.endswith(GENERATED_SUFFIXES)}


def spec_fields() -> dict[str, FieldDescriptor]:
    return {f.json_name: f for f in wasmplugin_pb2.WasmPluginSpec.DESCRIPTOR.fields}


def test_every_proto_has_committed_bindings() -> None:
    protos = sorted(p.stem for p in PROTO_DIR.glob("*.proto"))
    assert protos == ["serviceentry", "sidecar", "wasmplugin"]
    assert sorted(generated_files(API_DIR)) == sorted(
        f"{stem}{suffix}" for stem in protos for suffix in GENERATED_SUFFIXES
    )


def test_committed_bindings_equal_freshly_generated_ones(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = generated_files(tmp_path)
    committed = generated_files(API_DIR)
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"run `python -m controlplane.api.generate`: {stale} differ from protos/"


def test_wasm_plugin_spec_has_every_istio_field() -> None:
    assert set(spec_fields()) == ISTIO_WASM_PLUGIN_FIELDS


def test_wasm_plugin_spec_field_shapes_follow_istio() -> None:
    fields = spec_fields()
    assert fields["priority"].message_type.full_name == "google.protobuf.Int32Value"
    assert fields["pluginConfig"].message_type.full_name == "google.protobuf.Struct"
    assert fields["targetRefs"].is_repeated and not fields["targetRef"].is_repeated
    assert fields["match"].is_repeated
    assert [v.name for v in fields["phase"].enum_type.values] == ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]
    assert [(v.name, v.number) for v in fields["failStrategy"].enum_type.values] == [
        ("FAIL_CLOSE", 0),
        ("FAIL_OPEN", 1),
        ("FAIL_RELOAD", 2),
    ]
    assert [v.name for v in fields["imagePullPolicy"].enum_type.values] == [
        "UNSPECIFIED_POLICY",
        "IfNotPresent",
        "Always",
    ]
    assert [v.name for v in fields["type"].enum_type.values] == ["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]
    env = fields["vmConfig"].message_type.fields_by_name["env"].message_type
    assert {f.json_name for f in env.fields} == {"name", "valueFrom", "value"}
    assert [v.name for v in env.fields_by_name["value_from"].enum_type.values] == ["INLINE", "HOST"]
    selector = fields["match"].message_type
    assert {f.json_name for f in selector.fields} == {"mode", "ports"}
    assert [v.name for v in selector.fields_by_name["mode"].enum_type.values] == [
        "UNDEFINED",
        "CLIENT",
        "SERVER",
        "CLIENT_AND_SERVER",
    ]
    target = fields["targetRefs"].message_type
    assert {f.json_name for f in target.fields} == {"group", "kind", "name", "namespace"}
