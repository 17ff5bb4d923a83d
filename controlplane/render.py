"""Resources as people read them: YAML with typed configs decoded, in the order Envoy applies them."""

from __future__ import annotations

import json
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.translate.resources import ProxyResources


def message_as_dict(message: Message) -> dict[str, Any]:
    # Through JSON text, which turns protobuf's OrderedDicts into plain mappings for the YAML dumper.
    result: dict[str, Any] = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
    return result


def resources_as_dict(resources: ProxyResources) -> dict[str, Any]:
    def decode(messages: tuple[Any, ...]) -> list[Any]:
        return [message_as_dict(m) for m in messages]

    return {
        "clusters": decode(resources.clusters),
        "extension_configs": decode(resources.extension_configs),
        "listeners": decode(resources.listeners),
    }


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)
