"""Splits a YAML file into documents and remembers the line of every key, so that a later error about
`spec.match[0].mode` can point at the line the user wrote it on."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from controlplane.errors import ConfigError
from controlplane.source import go_yaml_scalars

T = TypeVar("T")

FieldPath = tuple[str | int, ...]
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")

MAX_DEPTH = 64
"""Deeper than any real config, shallow enough that no recursive step after parsing can overflow the stack."""
MAX_NODES = 100_000
"""Nodes of one document once aliases are expanded: stops a "billion laughs" document from hanging the loader
(every later step walks the expanded tree)."""
MAX_ALIASED_PER_FILE = 100_000
"""Values that aliases add to the documents of one file, all together: many documents each just under
MAX_NODES would otherwise cost as much as one without a cap."""
MAX_ALIASED_PER_LOAD = 200_000
"""Values that aliases add to all the files parsed in one load: caps the work of a reload however many such
files there are. Real configs use aliases for a few shared defaults, thousands of values at most."""


@dataclass
class AliasBudget:
    """What aliases may still add in one load; shared by the files it parses."""

    remaining: int = MAX_ALIASED_PER_LOAD
    refused: set[str] = field(default_factory=set)
    """Files refused because the load's budget ran out: their own content may be fine, so they are read
    again at the next load rather than remembered as broken."""


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
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.match(part):
            # Quoted, with colons escaped too, so that an odd key (a newline, ": ") cannot break the one-line
            # `path:line: field: reason`.
            text += "[" + json.dumps(part).replace(":", "\\u003a") + "]"
        else:
            text += f".{part}" if text else part
    return text or "<document>"


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml where PyYAML has it: three times faster on a cold directory."""


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Reads documents as Kubernetes does (sigs.k8s.io/yaml over go-yaml v2), so that YAML written for Istio
    means the same here: a timestamp stays the text it was written as and every mapping key becomes a
    string. Duplicate keys, which PyYAML silently lets the last one win, are reported by `_record_lines`."""

    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return go_yaml_scalars.resolve_plain(value)[0]
        return str(super().resolve(kind, value, implicit))

    # go-yaml v2 keeps timestamps as strings when decoding into interface{}, for backward compatibility.
    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> str:
        return str(node.value)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        return self._scalar(node, go_yaml_scalars.construct_int)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        return self._scalar(node, go_yaml_scalars.construct_float)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return self._scalar(node, go_yaml_scalars.construct_bool)

    def _scalar(self, node: yaml.ScalarNode, construct: Callable[[str], T]) -> T:
        try:
            return construct(str(self.construct_scalar(node)))
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, str(exc), node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[str, Any]:
        self.flatten_mapping(node)  # merged keys first, so that the mapping's own keys win, as in PyYAML
        return {self.key_text(k): self.construct_object(v, deep=deep) for k, v in node.value}

    def key_text(self, key_node: yaml.Node) -> str:
        return _json_key(self.construct_object(key_node, deep=True), key_node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _Loader.construct_yaml_bool)


def _json_key(key: Any, node: yaml.Node) -> str:
    """A mapping key as sigs.k8s.io/yaml's convertToJSONableObject turns it into a JSON object key."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int) and -(2**63) <= key < 2**63:
        return str(key)
    if isinstance(key, int) and key < 2**64:
        # go-yaml v2 reads it as a uint64, a key type sigs.k8s.io/yaml refuses.
        raise _key_error(f"mapping key {key} does not fit a signed 64-bit integer; quote it", node)
    if isinstance(key, int | float):
        return _go_float32_text(float(key))  # beyond uint64 go-yaml v2 reads it as a float
    raise _key_error(f"a mapping key must be a string, number or boolean, not {node.tag.rpartition(':')[2]}", node)


def _key_error(problem: str, node: yaml.Node) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _go_float32_text(value: float) -> str:
    """Go's strconv.FormatFloat(value, 'g', -1, 32), with go-yaml's names for infinities and NaN."""
    if math.isnan(value):
        return ".nan"
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        single = math.copysign(math.inf, value)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    if single == 0:
        return "-0" if math.copysign(1, single) < 0 else "0"
    for digits in range(1, 10):  # the fewest significant digits that read back as the same float32
        text = f"{single:.{digits - 1}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            break
    mantissa, exponent_text = text.split("e")
    sign = "-" if mantissa.startswith("-") else ""
    significant = mantissa.lstrip("-").replace(".", "")
    exponent = int(exponent_text)
    if exponent < -4 or exponent >= 6:  # Go's %e form: at least two exponent digits
        fraction = f".{significant[1:]}" if len(significant) > 1 else ""
        return f"{sign}{significant[0]}{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{significant}"
    whole, fraction = significant[: exponent + 1].ljust(exponent + 1, "0"), significant[exponent + 1 :]
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def _too_deep(text: str) -> int | None:
    """The line where nesting passes MAX_DEPTH, or None. Checked on the event stream, which is read
    without recursion, before anything composes the document recursively (libyaml would crash there)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark.line + 1 if event.start_mark else 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml (0.2.5 and later) stops at a nesting limit of its own while scanning ahead, before any
        # event reaches us; say it in our words, at its line. Other syntax errors are the parser's to report.
        mark = exc.problem_mark
        if "nesting depth" in str(exc.problem) and mark is not None:
            return int(mark.line) + 1
        raise
    return None


def parse_yaml(path: str, text: str, budget: AliasBudget | None = None) -> tuple[list[YamlDocument], list[ConfigError]]:
    """Every non-empty document of `text`, or no document and the errors that make the file unusable.
    `budget`: what aliases may add in the load this file is part of; charged for what they add here."""
    documents: list[YamlDocument] = []
    errors: list[ConfigError] = []
    loader: _Loader | None = None
    aliased = 0
    try:
        deep_at = _too_deep(text)
        if deep_at is not None:
            return [], [ConfigError(path, deep_at, "<yaml>", f"nested deeper than {MAX_DEPTH} levels")]
        loader = _Loader(text)  # checks the characters: a NUL byte fails here
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            shape_problem, added = _shape(node)
            aliased += added
            if shape_problem is None and aliased > MAX_ALIASED_PER_FILE:
                shape_problem = f"aliases in this file add more than {MAX_ALIASED_PER_FILE} values"
            if shape_problem is None and budget is not None and aliased > budget.remaining:
                budget.refused.add(path)
                shape_problem = (
                    f"aliases in the files of this load add more than {MAX_ALIASED_PER_LOAD} values; "
                    "this file is read again at the next load"
                )
            if shape_problem is not None:
                return [], [ConfigError(path, node.start_mark.line + 1, "<yaml>", shape_problem)]
            lines: dict[FieldPath, int] = {}
            _record_lines(node, (), lines, loader.key_text, path, errors)
            data = loader.construct_document(node)
            if data is None:
                continue
            documents.append(YamlDocument(path, node.start_mark.line + 1, data, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        return [], [ConfigError(path, line, "<yaml>", f"syntax error: {reason}")]
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        return [], [ConfigError(path, line, "<yaml>", f"syntax error: {str(exc).splitlines()[0]}")]
    except yaml.YAMLError as exc:
        return [], [ConfigError(path, 1, "<yaml>", f"syntax error: {str(exc).splitlines()[0]}")]
    except RecursionError:
        # PyYAML composes recursively: a document nested a few hundred levels deep overflows it.
        return [], [ConfigError(path, 1, "<yaml>", f"nested deeper than {MAX_DEPTH} levels")]
    finally:
        if loader is not None:
            loader.dispose()
    if errors:
        # A duplicate key makes the file mean something other than what its author may think: take none of it.
        return [], errors
    if budget is not None:
        budget.remaining -= aliased
    return documents, errors


def _shape(root: yaml.Node) -> tuple[str | None, int]:
    """Why a document's node graph cannot be walked safely (too deep, an alias that contains itself, too
    large once aliases are expanded), or None; and how many values its aliases add to it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _Unsafe(f"nested deeper than {MAX_DEPTH} levels")
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise _Unsafe("an alias refers to a node that contains it")
        open_nodes.add(id(node))
        total = 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise _Unsafe(f"more than {MAX_NODES} values once aliases are expanded")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    try:
        expanded = size(root, 0)
    except _Unsafe as exc:
        return str(exc), 0
    return None, expanded - len(sizes)


class _Unsafe(Exception):
    pass


def _record_lines(
    node: yaml.Node,
    prefix: FieldPath,
    lines: dict[FieldPath, int],
    key_text: Callable[[yaml.Node], str],
    path: str,
    errors: list[ConfigError],
) -> None:
    """`key_text` gives a key as the document's data will hold it (`429` and `"429"` are the same key)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_text(key_node)
            child = prefix + (key,)
            if key in seen:
                errors.append(
                    ConfigError(path, key_node.start_mark.line + 1, format_field_path(child), "duplicate key")
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines, key_text, path, errors)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = prefix + (index,)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines, key_text, path, errors)
