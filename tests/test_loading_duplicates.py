"""The same document in two files: an error naming both, and which one serves (the one that was serving,
the one remembered from before a restart, else the path that sorts first)."""

from __future__ import annotations

from pathlib import Path

from controlplane.source.directory import load_directory
from tests.loading import documents, line_of, load, plugin_key, plugin_named, wasm_plugin, write


def test_the_same_object_in_two_files_is_an_error_naming_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    second_text = documents(
        wasm_plugin("url: oci://example.com/other:1", name="other"),
        wasm_plugin("url: oci://example.com/a:1\npriority: 2"),
    )
    second = write(tmp_path, "b/b.yaml", second_text)
    loaded = load(tmp_path)
    (error,) = loaded.errors
    assert (error.path, error.line, error.field) == (
        str(second),
        line_of(second_text, "apiVersion:", 1),
        "metadata.name",
    )
    assert error.reason.startswith("WasmPlugin default/plugin is declared more than once")
    assert f"{first}:1" in error.reason and f"{second}:{error.line}" in error.reason
    assert sorted(p.name for p in loaded.config.plugins) == ["other", "plugin"]
    assert plugin_named(loaded, "plugin").priority == 1


def test_a_new_duplicate_does_not_displace_the_served_object(tmp_path: Path) -> None:
    original = write(tmp_path, "z.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    first = load(tmp_path)
    copy = write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 2"))
    second = load(tmp_path, first)
    assert [(e.path, e.field) for e in second.errors] == [(str(copy), "metadata.name")]
    assert plugin_named(second, "plugin").priority == 1
    assert second.served[plugin_key("plugin")].path == str(original)


def test_a_fresh_load_serves_the_duplicate_whose_path_sorts_first_and_notes_it_there(tmp_path: Path) -> None:
    later = write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 2"))
    first = write(tmp_path, "a/z.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    loaded = load(tmp_path)
    assert loaded.served[plugin_key("plugin")].path == str(first)
    assert [(e.path, e.field) for e in loaded.errors] == [(str(later), "metadata.name")]
    assert [str(w) for w in loaded.warnings] == [
        f"{first}:1: metadata.name: WasmPlugin default/plugin is also declared in {later}:1; this one serves"
    ]


def test_a_remembered_serving_file_wins_over_path_order(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 1"))
    remembered = write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/a:1\npriority: 2"))
    loaded = load_directory([str(tmp_path)], None, frozenset(), {plugin_key("plugin"): str(remembered)})
    assert plugin_named(loaded, "plugin").priority == 2
    gone = load_directory([str(tmp_path)], None, frozenset(), {plugin_key("plugin"): str(tmp_path / "gone.yaml")})
    assert plugin_named(gone, "plugin").priority == 1
