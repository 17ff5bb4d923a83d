"""The config source on a bad day: folders that cannot be listed (no permission, out of file descriptors),
FIFOs and devices named like config files or modules, and files truncated to nothing. None of these may be
read as "no config": what the folder or file held keeps serving, and the fault is reported by name.

The faults are made for real. Tests run as root here, and root reads a `chmod 000` folder anyway; so the
control plane runs with the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from controlplane.model import ModuleFailed, ModuleKey
from controlplane.modules.download import FetchSettings
from controlplane.modules.resolver import resolve_module
from controlplane.modules.store import ModuleStore
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.status import file_status
from tests.support import (
    ORDER_MARKER_WASM,
    REPO,
    UNPRIVILEGED,
    ControlPlaneProcess,
    Process,
    start_control_plane,
    wait_for,
    wasm_plugin_yaml,
)

T = TypeVar("T")


def plugin(name: str, priority: int = 1) -> str:
    return wasm_plugin_yaml(name, f"file://{ORDER_MARKER_WASM}", priority=priority)


def served(control_plane: ControlPlaneProcess) -> list[str]:
    return sorted(s["name"] for s in control_plane.status()["serving"])


def release_readers(fifos: list[Path]) -> None:
    """Opens each FIFO for writing and closes it: a reader blocked on it gets end of file."""
    for fifo in fifos:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader is waiting


def within(seconds: float, call: Callable[[], T], fifos: list[Path]) -> T:
    """`call()`, failing the test if it blocks: then the FIFOs it waits on are released so that the test
    process can end."""
    result: list[T] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        release_readers(fifos)
        worker.join(5)
        pytest.fail(f"blocked for more than {seconds}s")
    return result[0]


@pytest.fixture
def restore_permissions() -> Iterator[list[Path]]:
    """Folders a test makes unreadable; readable again afterwards, so that the temporary files can go."""
    changed: list[Path] = []
    yield changed
    for folder in changed:
        folder.chmod(0o755)


def test_a_folder_that_cannot_be_listed_keeps_serving_what_it_held(
    tmp_path: Path, processes: list[Process], restore_permissions: list[Path]
) -> None:
    config = tmp_path / "config"
    team = config / "team"
    team.mkdir(parents=True)
    (team / "a.yaml").write_text(plugin("a"))
    (config / "b.yaml").write_text(plugin("b"))
    control_plane = start_control_plane(
        processes, config, tmp_path, "--resync-interval", "1", command_prefix=UNPRIVILEGED
    )
    assert served(control_plane) == ["a", "b"]

    restore_permissions.extend([team, config])
    team.chmod(0)
    folder_error = f"{team}:1: <folder>: cannot list: Permission denied; what it held keeps serving"
    wait_for(lambda: folder_error in control_plane.status()["errors"], what="the unreadable folder to be reported")
    assert served(control_plane) == ["a", "b"]

    config.chmod(0)
    root_error = f"{config}:1: <config-dir>: cannot list: Permission denied; what it held keeps serving"
    wait_for(lambda: root_error in control_plane.status()["errors"], what="the unreadable root to be reported")
    assert served(control_plane) == ["a", "b"]
    assert folder_error in control_plane.process.log() and root_error in control_plane.process.log()

    config.chmod(0o755)
    team.chmod(0o755)
    wait_for(lambda: control_plane.status()["errors"] == [], what="the folders to be read again")
    (team / "a.yaml").unlink()
    wait_for(lambda: served(control_plane) == ["b"], what="a deletion in the readable folder to apply")


EMFILE_LOAD = """
import json, os, resource, sys
from controlplane.source.directory import load_directory
root = sys.argv[1]
first = load_directory([root])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
second = load_directory([root], first)
for descriptor in held:
    os.close(descriptor)
print(json.dumps({"plugins": [p.name for p in second.config.plugins], "errors": [str(e) for e in second.errors]}))
"""


@pytest.mark.integration
def test_a_load_out_of_file_descriptors_keeps_serving_what_the_folder_held(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "a.yaml").write_text(plugin("a"))
    (tmp_path / "b.yaml").write_text(plugin("b"))
    result = subprocess.run(
        [sys.executable, "-c", EMFILE_LOAD, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    assert second == {
        "plugins": ["a", "b"],
        "errors": [f"{tmp_path}:1: <config-dir>: cannot list: Too many open files; what it held keeps serving"],
    }


def test_fifos_and_devices_named_yaml_are_reported_and_never_block_a_load(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(plugin("a"))
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    loaded = within(10, lambda: load_directory([str(tmp_path)]), [fifo])
    assert [p.name for p in loaded.config.plugins] == ["a"]
    assert [str(e) for e in loaded.errors] == [
        f"{fifo}:1: <file>: cannot read: a FIFO, not a regular file",
        f"{tmp_path / 'zero.yaml'}:1: <file>: cannot read: a character device, not a regular file",
    ]


def test_a_fifo_in_the_config_dir_never_holds_up_a_reload(tmp_path: Path, processes: list[Process]) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "a.yaml").write_text(plugin("a", priority=1))
    control_plane = start_control_plane(processes, config, tmp_path)
    fifo = config / "pipe.yaml"
    os.mkfifo(fifo)
    try:
        error = f"{fifo}:1: <file>: cannot read: a FIFO, not a regular file"
        wait_for(lambda: error in control_plane.status()["errors"], what="the FIFO to be reported")
        (config / "b.yaml").write_text(plugin("b"))
        wait_for(lambda: served(control_plane) == ["a", "b"], what="a change after the FIFO to apply")
        fifo.unlink()
        wait_for(lambda: control_plane.status()["errors"] == [], what="the FIFO's error to go with it")
    finally:
        release_readers([fifo])


def test_a_fifo_as_a_file_module_fails_instead_of_fetching_for_ever(tmp_path: Path) -> None:
    fifo = tmp_path / "plugin.wasm"
    os.mkfifo(fifo)
    key = ModuleKey(f"file://{fifo}", "")
    store = ModuleStore(tmp_path / "store")
    status = within(10, lambda: asyncio.run(resolve_module(key, store, FetchSettings())), [fifo])
    assert status == ModuleFailed(f"cannot read {fifo}: a FIFO, not a regular file")


def states(loaded: LoadedDirectory, path: Path) -> dict[str, Any]:
    return file_status(loaded)[str(path)]


def test_a_file_truncated_to_nothing_keeps_serving_what_it_held_until_deleted(tmp_path: Path) -> None:
    """A FAIL_CLOSE plugin emptied by mistake (a failed write, a full disk) must not silently stop running:
    a file is removed by deleting it."""
    kept = tmp_path / "kept.yaml"
    kept.write_text(plugin("a") + "---\n" + plugin("b"))
    (tmp_path / "other.yaml").write_text(plugin("c"))
    first = load_directory([str(tmp_path)])
    kept.write_text("")
    second = load_directory([str(tmp_path)], first)
    assert [p.name for p in second.config.plugins] == ["a", "b", "c"]
    reason = (
        "empty: still serving its last good WasmPlugin default/a, WasmPlugin default/b; delete the file to remove them"
    )
    assert [str(e) for e in second.errors] == [f"{kept}:1: <file>: {reason}"]
    assert states(second, kept)["state"] == "failed"
    assert [d["state"] for d in states(second, kept)["documents"]] == [
        f"failed, serving the last good version ({kept}:1)",
        f"failed, serving the last good version ({kept}:10)",
    ]
    third = load_directory([str(tmp_path)], second)  # unchanged since: still reported, still serving
    assert [str(e) for e in third.errors] == [f"{kept}:1: <file>: {reason}"]
    assert [p.name for p in third.config.plugins] == ["a", "b", "c"]

    kept.unlink()
    fourth = load_directory([str(tmp_path)], third)
    assert [p.name for p in fourth.config.plugins] == ["c"]
    assert fourth.errors == ()


def test_a_file_that_never_held_anything_may_be_empty(tmp_path: Path) -> None:
    (tmp_path / "placeholder.yaml").write_text("\n")
    (tmp_path / "commented.yaml").write_text(plugin("a"))
    first = load_directory([str(tmp_path)])
    (tmp_path / "commented.yaml").write_text("# moved to another repository\n")
    second = load_directory([str(tmp_path)], first)
    assert second.errors == () and second.config.plugins == ()
    assert states(second, tmp_path / "placeholder.yaml")["state"] == "applied"


def test_serve_reports_a_truncated_file_and_keeps_its_plugin(tmp_path: Path, processes: list[Process]) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "a.yaml").write_text(plugin("a"))
    control_plane = start_control_plane(processes, config, tmp_path)
    (config / "a.yaml").write_text("")
    error = f"{config / 'a.yaml'}:1: <file>: empty: still serving its last good WasmPlugin default/a; delete the file to remove them"
    wait_for(lambda: control_plane.status()["errors"] == [error], what="the emptied file to be reported")
    assert served(control_plane) == ["a"]
    assert error in control_plane.process.log()


def aliased_document(name: str, values: int) -> str:
    """A document to which aliases add `values` values (and a few hundred written out)."""
    written = 300
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n"
        f"  shared: &shared [{', '.join(['x'] * written)}]\n"
        f"  copies: [{', '.join(['*shared'] * (values // written))}]\n"
    )


def test_many_documents_just_under_the_alias_cap_are_refused_as_one_file(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text("---\n".join(aliased_document(f"c{i}", 60_000) for i in range(40)))
    loaded = load_directory([str(tmp_path)])
    assert [str(e) for e in loaded.errors] == [f"{path}:8: <yaml>: aliases in this file add more than 100000 values"]


def test_the_alias_cap_of_a_load_refuses_the_file_that_passes_it_until_the_next_load(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(aliased_document(name, 90_000))
    first = load_directory([str(tmp_path)])
    assert [str(e) for e in first.errors] == [
        f"{tmp_path / 'c.yaml'}:1: <yaml>: aliases in the files of this load add more than 200000 values; "
        "this file is read again at the next load"
    ]
    # a.yaml and b.yaml are unchanged, so not parsed again: c.yaml fits in the next load's budget.
    assert load_directory([str(tmp_path)], first).errors == ()
