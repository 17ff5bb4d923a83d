"""The admin view of a loaded directory: per file, what is applied and what failed and why."""

from __future__ import annotations

from pathlib import Path

from controlplane.source.directory import load_directory
from controlplane.source.status import file_status
from tests.support import wasm_plugin_yaml


def plugin(name: str, **kwargs: str) -> str:
    return wasm_plugin_yaml(name, "oci://example.com/x:1", **kwargs)  # type: ignore[arg-type]


def test_each_document_says_whether_it_is_applied_and_why_not(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(plugin("a") + "---\n" + plugin("b"))
    first = load_directory([str(tmp_path)])
    assert file_status(first) == {
        str(good): {
            "state": "applied",
            "errors": [],
            "notes": [],
            "documents": [
                {"line": 1, "kind": "WasmPlugin", "namespace": "default", "name": "a", "state": "applied"},
                {"line": 9, "kind": "WasmPlugin", "namespace": "default", "name": "b", "state": "applied"},
            ],
        }
    }

    good.write_text(plugin("a") + "---\n" + plugin("b", phase="LATE"))
    copy = tmp_path / "copy.yaml"
    copy.write_text(plugin("a"))
    second = file_status(load_directory([str(tmp_path)], first))
    assert second[str(good)]["state"] == "partly applied"
    assert [d["state"] for d in second[str(good)]["documents"]] == [
        "applied",
        f"failed, serving the last good version ({good}:9)",
    ]
    assert [e.split(": ")[1] for e in second[str(good)]["errors"]] == ["spec.phase"]
    assert second[str(copy)]["state"] == "failed"
    assert second[str(copy)]["documents"][0]["state"] == f"not applied: {good}:1 is served"
    assert "is declared more than once" in second[str(copy)]["errors"][0]


def test_a_file_that_no_longer_parses_lists_what_it_still_serves(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a"))
    first = load_directory([str(tmp_path)])
    path.write_text("spec: [unclosed\n")
    status = file_status(load_directory([str(tmp_path)], first))[str(path)]
    assert status["state"] == "failed"
    assert status["documents"] == [
        {
            "line": 1,
            "kind": "WasmPlugin",
            "namespace": "default",
            "name": "a",
            "state": f"failed, serving the last good version ({path}:1)",
        }
    ]


def test_a_file_being_written_keeps_its_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a", phase="AUTHN"))
    first = load_directory([str(tmp_path)])
    path.write_text("")  # truncated by a writer that has not written the new text yet
    held = load_directory([str(tmp_path)], first, frozenset({str(path.resolve())}))
    assert held.config == first.config
    assert file_status(held)[str(path)]["state"].startswith("being written")
    closed = load_directory([str(tmp_path)], held)  # left empty once closed: reported, and still serving
    assert closed.config == first.config
    assert [e.reason.split(":")[0] for e in closed.errors] == ["empty"]
