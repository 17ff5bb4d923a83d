"""What the loader tests share: documents written as users write them, into real files, and loaded."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

from controlplane.model import WasmPlugin
from controlplane.processes import controlplane_command
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.documents import DocumentKey

REPO = Path(__file__).resolve().parents[1]

SHA = "0123456789abcdef" * 4

ERROR_LINE = re.compile(r"^\S+:\d+: \S+: .+$")


def write(root: Path, name: str, text: str) -> Path:
    """Writes `text` (dedented) to `root/name`, creating folders; returns the path."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def wasm_plugin(
    spec: str,
    name: str = "plugin",
    namespace: str | None = "default",
    api_version: str = "extensions.istio.io/v1alpha1",
) -> str:
    """A WasmPlugin document; `spec` is the YAML body of its spec."""
    namespace_line = f"  namespace: {namespace}\n" if namespace else ""
    return (
        f"apiVersion: {api_version}\nkind: WasmPlugin\nmetadata:\n  name: {name}\n{namespace_line}"
        f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n"
    )


def sidecar(
    spec: str, name: str = "sidecar", namespace: str = "default", api_version: str = "networking.istio.io/v1"
) -> str:
    return (
        f"apiVersion: {api_version}\nkind: Sidecar\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n{textwrap.indent(textwrap.dedent(spec).strip(), '  ')}\n"
    )


def documents(*texts: str) -> str:
    return "---\n".join(texts)


def load(root: Path, previous: LoadedDirectory | None = None) -> LoadedDirectory:
    return load_directory([str(root)], previous)


def line_of(text: str, needle: str, occurrence: int = 0) -> int:
    """The 1-based line of the `occurrence`-th line of `text` that contains `needle`."""
    return [index for index, line in enumerate(text.splitlines(), 1) if needle in line][occurrence]


def only_plugin(loaded: LoadedDirectory) -> WasmPlugin:
    assert loaded.errors == ()
    assert len(loaded.config.plugins) == 1
    return loaded.config.plugins[0]


def plugin_named(loaded: LoadedDirectory, name: str, namespace: str = "default") -> WasmPlugin:
    return next(p for p in loaded.config.plugins if (p.namespace, p.name) == (namespace, name))


def plugin_key(name: str, namespace: str = "default") -> DocumentKey:
    return DocumentKey("WasmPlugin", namespace, name)


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        controlplane_command("validate", *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
