"""`controlplane validate` run as a process: exit 0 and a summary, every error with exit 1, exit 2 for a
missing directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loading import ERROR_LINE, line_of, sidecar, validate, wasm_plugin, write

pytestmark = pytest.mark.integration  # every test runs the command as a process


def test_validate_accepts_a_valid_directory(tmp_path: Path) -> None:
    write(tmp_path, "plugin.yaml", wasm_plugin("url: oci://example.com/a:1"))
    write(tmp_path, "sidecars/web.yml", sidecar("ingress:\n- port: {number: 80}\n  defaultEndpoint: 127.0.0.1:8080"))
    result = validate(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 1 WasmPlugin(s), 1 Sidecar(s) in 2 file(s)"


def test_validate_reports_every_error_and_exits_1(tmp_path: Path) -> None:
    bad_enum = wasm_plugin("url: oci://example.com/a:1\nfailStrategy: FAIL_SOMETIMES", name="a")
    no_url = wasm_plugin("pluginName: b", name="b")
    first = write(tmp_path, "a.yaml", bad_enum)
    second = write(tmp_path, "nested/b.yml", no_url)
    result = validate(str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert (
        f"{first}:{line_of(bad_enum, 'failStrategy:')}: spec.failStrategy: unknown value 'FAIL_SOMETIMES'; "
        "expected one of FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD" in lines
    )
    assert f"{second}:{line_of(no_url, 'spec:')}: spec.url: required" in lines
    assert all(ERROR_LINE.match(line) for line in lines), lines
    assert result.stdout == ""


def test_validate_exits_2_for_a_missing_directory(tmp_path: Path) -> None:
    result = validate(str(tmp_path / "absent"))
    assert result.returncode == 2
    assert str(tmp_path / "absent") in result.stderr
