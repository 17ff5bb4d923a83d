"""Checks a YAML tree against a protobuf message schema before converting it, so that every problem is
reported with the field path it sits at (protobuf's own JSON parser stops at the first one and names
no path)."""

from __future__ import annotations

import difflib
import math
import sys
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from controlplane.source.yaml_documents import FieldPath

Problem = tuple[FieldPath, str]
M = TypeVar("M", bound=Message)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
_WRAPPER_RANGES = {
    "google.protobuf.Int32Value": _INT_RANGES[FieldDescriptor.TYPE_INT32],
    "google.protobuf.UInt32Value": _INT_RANGES[FieldDescriptor.TYPE_UINT32],
    "google.protobuf.Int64Value": _INT_RANGES[FieldDescriptor.TYPE_INT64],
}


def parse_message(data: Any, message_type: type[M], at: FieldPath) -> tuple[M | None, list[Problem]]:
    """`data` as a `message_type`, or None and every problem found. Null values count as unset."""
    problems = _check_message(data, message_type.DESCRIPTOR, at)
    if problems:
        return None, problems
    message = message_type()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:  # the checks above should leave nothing for this to find
        return None, [(at, str(exc).splitlines()[0])]
    return message, []


def _check_message(data: Any, descriptor: Descriptor, at: FieldPath) -> list[Problem]:
    if descriptor.full_name == "google.protobuf.Struct":
        return _check_json_value(data, at) if isinstance(data, dict) else [(at, "expected a mapping")]
    if not isinstance(data, dict):
        return [(at, f"expected a mapping, got {_describe(data)}")]
    problems: list[Problem] = []
    # Field names as Istio's CRDs spell them (camelCase) and no other way: the API server refuses
    # `plugin_config`, so accepting it here would pass a file that `kubectl apply` rejects.
    fields = {f.json_name: f for f in descriptor.fields}
    for key, value in data.items():
        path = at + (str(key),)
        field = fields.get(str(key))
        if field is None:
            known = sorted({f.json_name for f in descriptor.fields})
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known fields: {', '.join(known)}"
            problems.append((path, f"unknown field{suggestion}"))
        elif value is not None:
            problems.extend(_check_field(value, field, path))
    return problems


def _check_field(value: Any, field: FieldDescriptor, at: FieldPath) -> list[Problem]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            return [(at, f"expected a mapping, got {_describe(value)}")]
        value_field = field.message_type.fields_by_name["value"]
        problems: list[Problem] = []
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((at + (str(key),), "keys must be strings"))
            problems.extend(_check_single(item, value_field, at + (str(key),)))
        return problems
    if field.is_repeated:
        if not isinstance(value, list):
            return [(at, f"expected a list, got {_describe(value)}")]
        return [p for index, item in enumerate(value) for p in _check_single(item, field, at + (index,))]
    return _check_single(value, field, at)


def _check_single(value: Any, field: FieldDescriptor, at: FieldPath) -> list[Problem]:
    if value is None:
        return [(at, "must not be null")]
    if field.message_type is not None:
        wrapper_range = _WRAPPER_RANGES.get(field.message_type.full_name)
        if wrapper_range is not None:
            return _check_int(value, wrapper_range, at)
        return _check_message(value, field.message_type, at)
    if field.enum_type is not None:
        return _check_enum(value, field.enum_type, at)
    if field.type == FieldDescriptor.TYPE_STRING:
        return [] if isinstance(value, str) else [(at, f"expected a string, got {_describe(value)}")]
    if field.type == FieldDescriptor.TYPE_BOOL:
        return [] if isinstance(value, bool) else [(at, f"expected true or false, got {_describe(value)}")]
    if field.type in _INT_RANGES:
        return _check_int(value, _INT_RANGES[field.type], at)
    return [(at, f"unsupported field type {field.type}")]


def _check_int(value: Any, bounds: tuple[int, int], at: FieldPath) -> list[Problem]:
    if isinstance(value, bool) or not isinstance(value, int):
        return [(at, f"expected an integer, got {_describe(value)}")]
    low, high = bounds
    if not low <= value <= high:
        return [(at, f"{value} is out of range [{low}, {high}]")]
    return []


def _check_enum(value: Any, enum: EnumDescriptor, at: FieldPath) -> list[Problem]:
    names = [v.name for v in enum.values]
    if isinstance(value, str) and value in names:
        return []
    return [(at, f"unknown value {value!r}; expected one of {', '.join(names)}")]


def _check_json_value(value: Any, at: FieldPath) -> list[Problem]:
    if isinstance(value, dict):
        problems = []
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((at + (str(key),), "keys must be strings"))
            problems.extend(_check_json_value(item, at + (str(key),)))
        return problems
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _check_json_value(item, at + (index,))]
    if isinstance(value, float) and not math.isfinite(value):
        return [(at, "not a finite number")]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        return [(at, "too large for a JSON number (a float64)")]
    if value is None or isinstance(value, (str, int, float, bool)):
        return []
    return [(at, f"{_describe(value)} cannot be expressed in JSON; quote it")]


def _describe(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)
