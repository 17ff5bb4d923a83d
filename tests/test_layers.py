"""The pipeline's imports run one way: each part imports only the parts below it (source and modules
beside each other, neither importing the other), and no module imports itself round a cycle. Read from the
source text, so that a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.support import REPO

PACKAGE = REPO / "controlplane"
LAYERS: list[set[str]] = [
    {"errors", "model", "api", "redaction", "regular_file", "logs"},
    {
        "image_reference",
        "addresses",
        "files",
        "docker_config",
        "processes",
        "workers",
        "verification_keys",
        "tls",
        "identity",
        "lifetime",
    },
    {"source", "modules", "xds"},
    {"translate", "http_server"},
    {"node", "snapshots", "render", "diff", "serve_settings", "convergence"},
    {"bootstrap"},
    {"admin", "demo", "access"},
    {"ports"},
    {"app", "proxy_status"},
    {"cli"},
    {"__main__"},
]
"""From the bottom up. A part may import parts of lower layers, and itself."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports: `from a.b import c` is `a.b.c` when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name == "controlplane" or name.startswith("controlplane.")}


@functools.cache
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def layer(module: str) -> int:
    [index] = [i for i, parts in enumerate(LAYERS) if part(module) in parts]
    return index


def test_every_part_has_a_layer() -> None:
    parts = {part(m) for m in graph()} - {""}
    assert parts <= set().union(*LAYERS), f"parts without a layer: {sorted(parts - set().union(*LAYERS))}"


def test_imports_go_down_the_layers_only() -> None:
    wrong = [
        f"{importer} imports {imported}"
        for importer, imported_modules in sorted(graph().items())
        if part(importer)
        for imported in sorted(imported_modules)
        if part(imported) != part(importer) and layer(imported) >= layer(importer)
    ]
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = []
    state: dict[str, str] = {}  # "open" while on the path, "done" once every module below it is checked

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(edges.get(module, ())):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_check_sees_a_wrong_import() -> None:
    assert "controlplane.translate.resources" in graph()["controlplane.snapshots.builder"]
    assert layer("controlplane.translate.resources") < layer("controlplane.snapshots.builder")
    assert layer("controlplane.modules.resolver") == layer("controlplane.source.directory")
