"""Splits a YAML file into documents and remembers the line of every key, so that a later error about
`spec.match[0].mode` can point at the line the user wrote it on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.errors import ConfigError

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDocument:
    path: str
    line: int
    data: Any
    lines: Mapping[FieldPath, int] = field(repr=False)

    def line_of(self, field_path: FieldPath) -> int:
        """The line of the deepest part of `field_path` that the document spells out."""
        for end in range(len(field_path), 0, -1):
            line = self.lines.get(field_path[:end])
            if line is not None:
                return line
        return self.line


def format_field_path(field_path: FieldPath) -> str:
    text = ""
    for part in field_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<document>"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that reports duplicate keys, which plain PyYAML silently lets the last one win."""


def parse_yaml(path: str, text: str) -> tuple[list[YamlDocument], list[ConfigError]]:
    """Every non-empty document of `text`, or no document and the errors that make the file unusable."""
    documents: list[YamlDocument] = []
    errors: list[ConfigError] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[FieldPath, int] = {}
            _record_lines(node, (), lines, path, errors)
            data = loader.construct_document(node)
            if data is None:
                continue
            documents.append(YamlDocument(path, node.start_mark.line + 1, data, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        return [], [ConfigError(path, line, "<yaml>", f"syntax error: {reason}")]
    except yaml.YAMLError as exc:
        return [], [ConfigError(path, 1, "<yaml>", f"syntax error: {exc}")]
    finally:
        loader.dispose()
    if errors:
        # A duplicate key makes the file mean something other than what its author may think: take none of it.
        return [], errors
    return documents, errors


def _record_lines(
    node: yaml.Node, prefix: FieldPath, lines: dict[FieldPath, int], path: str, errors: list[ConfigError]
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key == "<<":
                continue
            child = prefix + (key,)
            if key in seen:
                errors.append(
                    ConfigError(path, key_node.start_mark.line + 1, format_field_path(child), "duplicate key")
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines, path, errors)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = prefix + (index,)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines, path, errors)
