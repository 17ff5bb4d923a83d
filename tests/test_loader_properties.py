"""The loader against whatever a repository can hold: arbitrary bytes, arbitrary YAML trees, and valid
documents with any field replaced by anything. It returns documents or clean `path:line: field: reason`
errors; it never raises, and hostile shapes (deep nesting, aliases that expand or contain themselves) are
refused instead of walked."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.source.directory import FileState, LoadedDirectory, load_directory, read_file
from controlplane.source.yaml_documents import MAX_DEPTH, MAX_NODES

ERROR_LINE = re.compile(r"^[^\n]+:[1-9][0-9]*: [^\n:]+: [^\n]+$")
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

VALID_PLUGIN: dict[str, Any] = {
    "apiVersion": "extensions.istio.io/v1alpha1",
    "kind": "WasmPlugin",
    "metadata": {"name": "plugin", "namespace": "default"},
    "spec": {
        "url": "oci://example.com/plugin:1",
        "selector": {"matchLabels": {"app": "web"}},
        "phase": "AUTHN",
        "priority": 10,
        "pluginConfig": {"a": [1, 2.5, "x", None, True]},
        "vmConfig": {"env": [{"name": "A", "value": "1"}]},
        "match": [{"mode": "SERVER", "ports": [{"number": 80}]}],
    },
}
VALID_SIDECAR: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Sidecar",
    "metadata": {"name": "web"},
    "spec": {
        "workloadSelector": {"labels": {"app": "web"}},
        "ingress": [{"port": {"number": 8080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:80"}],
    },
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["WasmPlugin", "Sidecar", "AUTHN", "FAIL_OPEN", "oci://x/y:1", "file://a.wasm", "default"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["apiVersion", "kind", "metadata", "spec", "name", "namespace", "url", "selector", "matchLabels", "phase"]
        + ["priority", "pluginConfig", "vmConfig", "env", "match", "ports", "number", "ingress", "targetRefs"]
    ),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=25,
)


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid document with one value somewhere in it replaced by an arbitrary tree: the errors then come
    from the deep checks, not from the first look at `kind`."""
    document = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from([VALID_PLUGIN, VALID_SIDECAR]))))
    node = document
    while isinstance(node, dict | list) and node:
        index = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if draw(st.booleans()) or not isinstance(node[index], dict | list):
            node[index] = draw(trees)
            break
        node = node[index]
    return document


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def read_bytes(folder: Path, content: bytes) -> FileState:
    path = folder / "config.yaml"
    path.write_bytes(content)
    return read_file(str(path), None)


def assert_clean(state: FileState) -> None:
    errors = list(state.errors) + [e for d in state.documents for e in d.errors]
    for error in errors:
        assert error.path == state.path
        assert ERROR_LINE.match(str(error)), str(error)
        assert "internal error" not in error.reason, str(error)
    for document in state.documents:
        assert (document.value is None) == bool(document.errors), document
        if document.value is not None:
            assert document.key is not None


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=300))
def test_arbitrary_bytes_give_documents_or_clean_errors(scratch: Path, content: bytes) -> None:
    assert_clean(read_bytes(scratch, content))


@PROPERTY_SETTINGS
@given(text=st.text(alphabet="abk:-[]{}&*!|>'\"#%@`,?\n .0123456789\t\\<=", max_size=200))
def test_arbitrary_yaml_like_text_gives_documents_or_clean_errors(scratch: Path, text: str) -> None:
    assert_clean(read_bytes(scratch, text.encode()))


@PROPERTY_SETTINGS
@given(documents=st.lists(st.one_of(trees, mutated_documents()), min_size=1, max_size=3))
def test_arbitrary_yaml_trees_give_documents_or_clean_errors(scratch: Path, documents: list[Any]) -> None:
    assert_clean(read_bytes(scratch, yaml.safe_dump_all(documents, allow_unicode=True).encode()))


@PROPERTY_SETTINGS
@given(versions=st.lists(st.lists(st.one_of(mutated_documents(), st.binary(max_size=40)), max_size=2), max_size=4))
def test_successive_loads_of_arbitrary_versions_never_raise(scratch: Path, versions: list[list[Any]]) -> None:
    """The last good bookkeeping across reloads, with files coming, going and breaking; a Sidecar that
    serves from its own file keeps serving whatever duplicates of it appear."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    valid = folder / "valid.yaml"
    valid.write_text(yaml.safe_dump(VALID_SIDECAR))
    loaded = load_directory([str(folder)], LoadedDirectory())
    for version in versions:
        for old in folder.glob("file-*.yaml"):
            old.unlink()
        for index, content in enumerate(version):
            data = content if isinstance(content, bytes) else yaml.safe_dump(content).encode()
            (folder / f"file-{index}.yaml").write_bytes(data)
        loaded = load_directory([str(folder)], loaded)
        assert all(ERROR_LINE.match(str(e)) for e in loaded.errors), loaded.errors
        assert set(loaded.config.plugins + loaded.config.sidecars) == {s.value for s in loaded.served.values()}
        assert any(s.name == "web" and s.source.path == str(valid) for s in loaded.config.sidecars)


def test_nesting_too_deep_for_the_parser_is_one_error_at_its_line(scratch: Path) -> None:
    """libyaml has a nesting limit of its own, reached while scanning ahead, and its wording changes between
    PyYAML releases: what must hold is ours, one error naming the file and line, and nothing loaded."""
    state = read_bytes(scratch, b"a: 1\nb: " + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert [(e.path, e.line, e.field) for e in state.errors] == [(state.path, 2, "<yaml>")], state.errors
    assert state.documents == ()
    assert_clean(state)


def billion_laughs(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(billion_laughs(9), f"more than {MAX_NODES} values once aliases are expanded", id="billion laughs"),
        pytest.param("a: &a\n  b: *a\n", "an alias refers to a node that contains it", id="recursive alias"),
        pytest.param("a: &a [*a]\n", "an alias refers to a node that contains it", id="recursive list"),
        pytest.param("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2), f"nested deeper than {MAX_DEPTH}", id="deep"),
        pytest.param("kind: Sidecar\nname: \x00\n", "syntax error: unacceptable character #x0000", id="NUL"),
    ],
)
def test_hostile_shapes_are_refused_with_an_error(scratch: Path, text: str, reason: str) -> None:
    state = read_bytes(scratch, text.encode())
    assert len(state.errors) == 1 and reason in state.errors[0].reason, state.errors
    assert_clean(state)


def test_aliases_that_stay_small_are_fine(scratch: Path) -> None:
    text = """apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: a}
spec:
  url: oci://example.com/a:1
  pluginConfig:
    first: &shared {x: 1, z: [1, 2]}
    second: *shared
"""
    state = read_bytes(scratch, text.encode())
    assert_clean(state)
    (document,) = state.documents
    assert document.value is not None and document.value.plugin_config == (
        '{"first":{"x":1,"z":[1,2]},"second":{"x":1,"z":[1,2]}}'
    )
