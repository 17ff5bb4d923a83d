"""Finding config: which files below the roots are read, every document of a file, other kinds
skipped, and roots that are missing or vanish (what they held keeps serving)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loading import documents, line_of, load, sidecar, wasm_plugin, write


def test_every_document_of_a_multi_document_file_is_loaded(tmp_path: Path) -> None:
    text = documents(
        wasm_plugin("url: oci://example.com/a:1", name="a"),
        wasm_plugin("url: oci://example.com/b:1", name="b"),
        sidecar("ingress:\n- port: {number: 8080}\n  defaultEndpoint: 127.0.0.1:9000"),
    )
    write(tmp_path, "all.yaml", text)
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert [p.name for p in loaded.config.plugins] == ["a", "b"]
    assert [s.name for s in loaded.config.sidecars] == ["sidecar"]
    assert [p.source.line for p in loaded.config.plugins] == [1, line_of(text, "apiVersion:", 1)]


def test_yaml_and_yml_files_in_nested_folders_are_found_and_hidden_ones_skipped(tmp_path: Path) -> None:
    write(tmp_path, "top.yaml", wasm_plugin("url: oci://example.com/a:1", name="top"))
    write(tmp_path, "team/one/nested.yml", wasm_plugin("url: oci://example.com/a:1", name="nested"))
    write(tmp_path, "team/deep/er/deeper.yaml", wasm_plugin("url: oci://example.com/a:1", name="deeper"))
    write(tmp_path, ".hidden.yaml", wasm_plugin("url: oci://example.com/a:1", name="hidden-file"))
    write(tmp_path, ".git/config.yaml", wasm_plugin("url: oci://example.com/a:1", name="hidden-dir"))
    write(tmp_path, "team/..data/cm.yaml", wasm_plugin("url: oci://example.com/a:1", name="configmap-data"))
    write(tmp_path, "notes.txt", wasm_plugin("url: oci://example.com/a:1", name="not-yaml"))
    write(tmp_path, "broken.yaml.swp", "::: not yaml at all")
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comments-only.yml", "# nothing here yet\n---\n")
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert sorted(p.name for p in loaded.config.plugins) == ["deeper", "nested", "top"]
    assert sorted(Path(f).relative_to(tmp_path).as_posix() for f in loaded.files) == [
        "comments-only.yml",
        "empty.yaml",
        "team/deep/er/deeper.yaml",
        "team/one/nested.yml",
        "top.yaml",
    ]


def test_other_kinds_are_skipped_without_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        "app.yaml",
        documents(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  bogus: true\n",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n",
            wasm_plugin("url: oci://example.com/a:1"),
        ),
    )
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert [p.name for p in loaded.config.plugins] == ["plugin"]
    assert len(loaded.served) == 1


def test_a_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    loaded = load(tmp_path / "typo")
    assert [str(e) for e in loaded.errors] == [
        f"{tmp_path / 'typo'}:1: <config-dir>: no such folder or file; what it held keeps serving"
    ]


@pytest.mark.parametrize("how", ["renamed away", "symlink to nothing"])
def test_a_vanished_root_keeps_serving_its_last_good_files(tmp_path: Path, how: str) -> None:
    """As during `rm -rf; mkdir` or a mount that went away: no push that removes every plugin."""
    real = tmp_path / "real"
    write(real, "a.yaml", wasm_plugin("url: oci://example.com/a:1", name="a"))
    write(real, "nested/b.yaml", wasm_plugin("url: oci://example.com/b:1", name="b"))
    root = tmp_path / "config"
    root.symlink_to(real)
    first = load(root)
    assert len(first.config.plugins) == 2
    if how == "renamed away":
        real.rename(tmp_path / "elsewhere")
    else:
        root.unlink()
        root.symlink_to(tmp_path / "nothing")
    second = load(root, first)
    assert [(e.path, e.field) for e in second.errors] == [(str(root), "<config-dir>")]
    assert second.config == first.config
    assert second.served == first.served

    # Back, with one file fewer: read as usual again.
    if how == "renamed away":
        (tmp_path / "elsewhere").rename(real)
    else:
        real.rename(tmp_path / "nothing")
    (root / "nested" / "b.yaml").unlink()
    third = load(root, second)
    assert third.errors == ()
    assert [p.name for p in third.config.plugins] == ["a"]
