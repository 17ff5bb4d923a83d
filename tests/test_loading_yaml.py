"""YAML read as Kubernetes reads it (sigs.k8s.io/yaml over go-yaml v2): timestamps stay text, keys become
strings, and keys Kubernetes cannot read are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.loading import line_of, load, only_plugin, wasm_plugin, write


def test_timestamps_and_non_string_keys_are_read_as_kubernetes_reads_them(tmp_path: Path) -> None:
    """sigs.k8s.io/yaml: go-yaml v2 keeps timestamps as their text, and keys become strings on the way to
    JSON (floats in Go's shortest float32 form)."""
    write(
        tmp_path,
        "plugin.yaml",
        wasm_plugin(
            """
        url: oci://example.com/a:1
        pluginConfig:
          valid_until: 2025-12-31
          at: 2001-12-14t21:59:43.10-05:00
          status_text: {429: too many, 0x1f: hex}
          flags: {true: on, false: off}
          ratios: {1.5: a, 1.0: b, 1000000.0: c, 0.1: d}
          days: {2025-01-01: new year}
        """
        ),
    )
    assert json.loads(only_plugin(load(tmp_path)).plugin_config) == {
        "valid_until": "2025-12-31",
        "at": "2001-12-14t21:59:43.10-05:00",
        "status_text": {"429": "too many", "31": "hex"},
        "flags": {"true": True, "false": False},
        "ratios": {"1.5": "a", "1": "b", "1e+06": "c", "0.1": "d"},
        "days": {"2025-01-01": "new year"},
    }


def test_keys_made_strings_keep_their_lines_and_collide_as_duplicates(tmp_path: Path) -> None:
    text = wasm_plugin("url: oci://example.com/a:1\nselector:\n  matchLabels:\n    app: web\n    2024: 5")
    path = write(tmp_path, "plugin.yaml", text)
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:{line_of(text, '2024: 5')}: spec.selector.matchLabels.2024: expected a string, got an integer"
    ]
    text = wasm_plugin("url: oci://example.com/a:1\npluginConfig:\n  429: a\n  '429': b")
    path = write(tmp_path, "plugin.yaml", text)
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:{line_of(text, chr(39) + '429')}: spec.pluginConfig.429: duplicate key"
    ]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("~", "a mapping key must be a string, number or boolean, not null"),
        ("18446744073709551615", "mapping key 18446744073709551615 does not fit a signed 64-bit integer; quote it"),
    ],
)
def test_keys_kubernetes_cannot_read_are_errors(tmp_path: Path, key: str, reason: str) -> None:
    text = wasm_plugin(f"url: oci://example.com/a:1\npluginConfig:\n  {key}: x")
    path = write(tmp_path, "plugin.yaml", text)
    assert [str(e) for e in load(tmp_path).errors] == [
        f"{path}:{line_of(text, key + ': x')}: <yaml>: syntax error: {reason}"
    ]
