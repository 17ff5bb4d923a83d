"""`pluginConfig` as the JSON text Istio hands a plugin: the spec's protobuf Struct written by jsonpb
(istio pkg/util/protomarshal ToJSON), which sorts keys and writes every value through Go's encoding/json.
A Struct holds every number as a float64, so `2.0` is written `2`, `1e21` as `1e+21` and integers past
2^53 rounded; strings escape `<`, `>`, `&`, U+2028 and U+2029 and keep other text as UTF-8."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_HTML_UNSAFE = frozenset("<>&\u2028\u2029")


def struct_json(value: Any) -> str:
    """A YAML/JSON tree (mappings with string keys, lists, strings, numbers, booleans, null) as jsonpb
    writes the Struct made of it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return go_float(value)
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, list):
        return "[" + ",".join(struct_json(v) for v in value) + "]"
    if isinstance(value, dict):
        # Sorted as Go sorts strings (by UTF-8 bytes, which is code point order).
        return "{" + ",".join(f"{go_string(k)}:{struct_json(value[k])}" for k in sorted(value)) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def go_float(value: float) -> str:
    """Go's encoding/json float64 text: the shortest digits that read back as the same float64, in
    plain notation for 1e-6 <= |x| < 1e21 and in exponent notation (`1e+21`, `1e-7`) outside it. An
    integer is first rounded to a float64, as the Struct holds it."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{number} cannot be written in JSON")
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(str(d) for d in digit_tuple)
    minus = "-" if sign else ""
    if 1e-6 <= abs(number) < 1e21:
        if exponent >= 0:
            return minus + digits + "0" * exponent
        point = len(digits) + exponent
        if point > 0:
            return f"{minus}{digits[:point]}.{digits[point:]}"
        return f"{minus}0.{'0' * -point}{digits}"
    scientific = len(digits) - 1 + exponent
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    # strconv writes at least two exponent digits; encoding/json then trims `e-07` to `e-7` (only then).
    exponent_text = f"{abs(scientific):02d}" if scientific >= 0 else str(-scientific)
    return f"{minus}{mantissa}e{'+' if scientific >= 0 else '-'}{exponent_text}"


def go_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " " or char in _HTML_UNSAFE:
            out.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            out.append("\ufffd")  # a lone surrogate is not UTF-8: Go writes the replacement character
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
