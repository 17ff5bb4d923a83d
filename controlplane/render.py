"""Resources as people read them: YAML with typed configs decoded, in the order Envoy applies them."""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml
from google.protobuf import json_format

from controlplane.translate.resources import ProxyResources


def resources_as_dict(resources: ProxyResources) -> dict[str, Any]:
    def decode(messages: tuple[Any, ...]) -> list[Any]:
        # Through JSON text, which turns protobuf's OrderedDicts into plain mappings for the YAML dumper.
        return [json.loads(json_format.MessageToJson(m, preserving_proto_field_name=True)) for m in messages]

    return {
        "clusters": decode(resources.clusters),
        "extension_configs": [_summarize_code(c) for c in decode(resources.extension_configs)],
        "listeners": decode(resources.listeners),
    }


def _summarize_code(value: Any) -> Any:
    """A module sent inline is shown by its size: megabytes of base64 would say nothing to a reader."""
    if isinstance(value, dict):
        return {
            k: f"<{len(base64.b64decode(v))} bytes of Wasm>" if k == "inline_bytes" else _summarize_code(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_summarize_code(v) for v in value]
    return value


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)
