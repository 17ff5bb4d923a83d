"""Resources as people read them: YAML with typed configs decoded, in the order Envoy applies them."""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.translate.resources import ProxyResources


def message_as_dict(message: Message) -> dict[str, Any]:
    """An Envoy message as its YAML and JSON configs write it: proto field names, typed configs decoded."""
    # Through JSON text, which turns protobuf's OrderedDicts into plain mappings for the YAML dumper.
    decoded: dict[str, Any] = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
    return decoded


def resources_as_dict(resources: ProxyResources) -> dict[str, Any]:
    def decode(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
        return [message_as_dict(m) for m in messages]

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
