"""Plain YAML scalars read as go-yaml v2 reads them (its resolve.go), which is what Kubernetes and so
Istio use (sigs.k8s.io/yaml): `y`/`n` are booleans, `1e3` and `-.5` numbers, `0o17` an integer, `1:30`
text (no base 60), `=` text. PyYAML's YAML 1.1 resolver differs on each."""

from __future__ import annotations

import math
import re

NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
STR_TAG = "tag:yaml.org,2002:str"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MERGE_TAG = "tag:yaml.org,2002:merge"

_WORDS: dict[str, tuple[str, object]] = {
    **{w: (BOOL_TAG, True) for w in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{w: (BOOL_TAG, False) for w in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")},
    **{w: (NULL_TAG, None) for w in ("", "~", "null", "Null", "NULL")},
    **{w: (FLOAT_TAG, math.nan) for w in (".nan", ".NaN", ".NAN")},
    **{w: (FLOAT_TAG, math.inf) for w in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")},
    **{w: (FLOAT_TAG, -math.inf) for w in ("-.inf", "-.Inf", "-.INF")},
    "<<": (MERGE_TAG, "<<"),
}
_YAML_STYLE_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DOT_FLOAT = re.compile(r"^\.[0-9]+([eE][-+]?[0-9]+)?$")
"""What Go's strconv.ParseFloat takes of a scalar that begins with a dot (no underscores, no hex)."""
_DIGITS = {16: "0123456789abcdefABCDEF", 10: "0123456789", 8: "01234567", 2: "01"}
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"(([Tt][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]+)?(Z|[-+][0-9]{2}:[0-9]{2}))"
    r"|( [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]+)?))?$"
)
"""go-yaml v2's allowedTimestampFormats: RFC 3339 with short fields (`T` or `t`), space-separated without
a zone, or a date alone."""
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1


def resolve_plain(text: str) -> tuple[str, object]:
    """The tag and value go-yaml v2 gives an untagged plain scalar. Timestamps keep their text (go-yaml
    decodes them into interface{} as strings)."""
    if text in _WORDS:
        return _WORDS[text]
    first = text[0]
    if first == ".":
        if _DOT_FLOAT.match(text):
            return FLOAT_TAG, float(text)
        return STR_TAG, text
    if first not in "+-0123456789":
        return STR_TAG, text
    if _TIMESTAMP.match(text):
        return TIMESTAMP_TAG, text
    plain = text.replace("_", "")
    number = go_parse_int(plain)
    unsigned = plain[0] not in "+-"  # strconv.ParseUint takes no sign
    if number is not None and (INT64[0] <= number <= INT64[1] or (unsigned and number <= UINT64_MAX)):
        return INT_TAG, number
    if _YAML_STYLE_FLOAT.match(plain):
        value = float(plain)
        if not math.isinf(value):  # ParseFloat reports a range error for these
            return FLOAT_TAG, value
    if number is not None and unsigned:
        return INT_TAG, number  # past 64 bits go-yaml keeps what math/big reads (hex, octal, binary)
    return STR_TAG, text


def go_parse_int(text: str) -> int | None:
    """Go's strconv.ParseInt(text, 0, ...) syntax without its range: a sign, then `0x`, `0o`, `0b` or a
    leading `0` (octal) prefix, or decimal digits."""
    sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    base = 10
    if len(digits) > 1 and digits[0] == "0":
        prefix = digits[1].lower()
        base, digits = {"x": (16, digits[2:]), "o": (8, digits[2:]), "b": (2, digits[2:])}.get(prefix, (8, digits[1:]))
    if not digits or any(c not in _DIGITS[base] for c in digits):
        return None
    return sign * int(digits, base)


def construct_int(text: str) -> int:
    number = go_parse_int(text.replace("_", ""))
    if number is None:
        raise ValueError(f"cannot decode {text!r} as an integer")
    return number


def construct_float(text: str) -> float:
    tag, value = resolve_plain(text)
    if tag in (FLOAT_TAG, INT_TAG) and isinstance(value, int | float):
        return float(value)
    raise ValueError(f"cannot decode {text!r} as a number")


def construct_bool(text: str) -> bool:
    tag, value = _WORDS.get(text, (STR_TAG, None))
    if tag != BOOL_TAG:
        raise ValueError(f"cannot decode {text!r} as a boolean")
    return bool(value)
