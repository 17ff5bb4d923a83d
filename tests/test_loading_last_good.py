"""The last good version: a broken file or document keeps serving what it last held while its neighbours
change, until it is fixed or removed."""

from __future__ import annotations

from pathlib import Path

from controlplane.model import Phase
from tests.loading import documents, load, plugin_key, plugin_named, wasm_plugin, write


def test_a_file_with_a_syntax_error_keeps_its_last_good_values(tmp_path: Path) -> None:
    broken = write(
        tmp_path,
        "a.yaml",
        documents(
            wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN", name="a1"),
            wasm_plugin("url: oci://example.com/a:1\npriority: 3", name="a2"),
        ),
    )
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1\nphase: STATS", name="b"))
    first = load(tmp_path)
    assert first.errors == ()

    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:2\nphase: AUTHZ: oops", name="a1"))
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1\nphase: AUTHZ", name="b"))
    second = load(tmp_path, first)

    assert [(e.path, e.field) for e in second.errors] == [(str(broken), "<yaml>")]
    assert plugin_named(second, "a1") == plugin_named(first, "a1")
    assert plugin_named(second, "a2").priority == 3
    assert second.served[plugin_key("a1")].stale is True
    assert second.served[plugin_key("a2")].stale is True
    assert plugin_named(second, "b").phase is Phase.AUTHZ
    assert second.served[plugin_key("b")].stale is False


def test_an_invalid_document_keeps_its_last_good_value_while_its_neighbours_change(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        documents(
            wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN", name="a1"),
            wasm_plugin("url: oci://example.com/a:1\npriority: 3", name="a2"),
        ),
    )
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1", name="b"))
    first = load(tmp_path)

    write(
        tmp_path,
        "a.yaml",
        documents(
            wasm_plugin("url: oci://example.com/a:2\nphase: AUTHX", name="a1"),
            wasm_plugin("url: oci://example.com/a:1\npriority: 7", name="a2"),
        ),
    )
    write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:2", name="b"))
    second = load(tmp_path, first)

    assert [e.field for e in second.errors] == ["spec.phase"]
    assert plugin_named(second, "a1") == plugin_named(first, "a1")
    assert second.served[plugin_key("a1")].stale is True
    assert plugin_named(second, "a2").priority == 7
    assert second.served[plugin_key("a2")].stale is False
    assert plugin_named(second, "b").url == "oci://example.com/b:2"


def test_fixing_a_broken_file_serves_the_new_version(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    first = load(tmp_path)
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: NOPE", name="a"))
    second = load(tmp_path, first)
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: STATS", name="a"))
    third = load(tmp_path, second)
    assert third.errors == ()
    assert plugin_named(third, "a").phase is Phase.STATS
    assert third.served[plugin_key("a")].stale is False


def test_a_new_invalid_document_has_no_last_good_version(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    first = load(tmp_path)
    write(tmp_path, "b.yaml", wasm_plugin("phase: AUTHN", name="b"))
    second = load(tmp_path, first)
    assert [p.name for p in second.config.plugins] == ["a"]
    assert plugin_key("b") not in second.served


def test_a_removed_file_takes_its_documents_with_it(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    removed = write(tmp_path, "b.yaml", wasm_plugin("url: oci://example.com/b:1", name="b"))
    first = load(tmp_path)
    removed.unlink()
    assert [p.name for p in load(tmp_path, first).config.plugins] == ["a"]


def test_a_file_that_gains_a_duplicate_key_keeps_its_last_good_value(tmp_path: Path) -> None:
    """A file reported as bad keeps serving its last good version, whatever made it bad."""
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN", name="a"))
    first = load(tmp_path)
    write(tmp_path, "a.yaml", wasm_plugin("url: oci://example.com/a:1\nphase: AUTHN\nphase: STATS", name="a"))
    second = load(tmp_path, first)
    assert [e.reason for e in second.errors] == ["duplicate key"]
    assert plugin_named(second, "a").phase is Phase.AUTHN
    assert second.served[plugin_key("a")].stale is True
