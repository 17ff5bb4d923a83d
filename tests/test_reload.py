"""The server's reloads: a config dir that is not there, where the load runs, and which of two duplicate
documents a restarted server serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

import controlplane.source.follower
from controlplane.app import ControlPlane
from controlplane.processes import controlplane_command
from controlplane.serve_settings import ServeSettings
from controlplane.source.directory import LoadedDirectory
from tests.support import ORDER_MARKER_WASM, Process, free_port, start_control_plane, wait_for, wasm_plugin_yaml

REPO = Path(__file__).resolve().parents[1]


def plugin(name: str, priority: int) -> str:
    return wasm_plugin_yaml(name, f"file://{ORDER_MARKER_WASM}", priority=priority)


def serving_source(status: dict[str, Any], name: str) -> str:
    return next(s["source"] for s in status["serving"] if s["name"] == name)


@pytest.mark.integration
def test_serve_exits_2_for_a_config_dir_that_does_not_exist(tmp_path: Path) -> None:
    result = subprocess.run(
        controlplane_command("serve", "--config-dir", str(tmp_path / "typo"))
        + ["--xds-port", str(free_port()), "--http-port", str(free_port()), "--cache-dir", str(tmp_path / "c")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--config-dir: no such folder or file: {tmp_path / 'typo'}" in result.stderr


def test_a_config_dir_renamed_away_keeps_serving_until_it_is_back(tmp_path: Path, processes: list[Process]) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "a.yaml").write_text(plugin("a", 1))
    control_plane = start_control_plane(processes, config, tmp_path)
    os.rename(config, tmp_path / "away")
    root_error = f"{config}:1: <config-dir>: no such folder or file; what it held keeps serving"
    wait_for(lambda: root_error in control_plane.status()["errors"], what="the missing root to be reported")
    assert [s["name"] for s in control_plane.status()["serving"]] == ["a"]
    assert root_error in control_plane.process.log()

    os.rename(tmp_path / "away", config)
    (config / "a.yaml").unlink()
    wait_for(lambda: control_plane.status()["serving"] == [], what="the returned folder to be read again")
    assert control_plane.status()["errors"] == []


def test_a_restarted_server_keeps_serving_the_duplicate_it_served(tmp_path: Path, processes: list[Process]) -> None:
    config = tmp_path / "config"
    config.mkdir()
    original = config / "z.yaml"
    original.write_text(plugin("a", 1))
    ports = (free_port(), free_port())
    first = start_control_plane(processes, config, tmp_path, ports=ports)
    (config / "copy.yaml").write_text(plugin("a", 2))
    wait_for(lambda: first.status()["errors"], what="the duplicate to be reported")
    assert serving_source(first.status(), "a") == f"{original}:1"
    first.process.stop()

    second = start_control_plane(processes, config, tmp_path, ports=ports)
    assert serving_source(second.status(), "a") == f"{original}:1"
    (notes,) = [f["notes"] for path, f in second.status()["files"].items() if path == str(original)]
    assert notes == [
        f"{original}:1: metadata.name: WasmPlugin default/a is also declared in {config}/copy.yaml:1; this one serves"
    ]


def test_the_directory_is_read_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a load reads files the loop keeps serving streams: here, a coroutine runs while the load is held
    in the middle of reading, and lets it finish."""
    (tmp_path / "a.yaml").write_text(plugin("a", 1))
    entered, release = threading.Event(), threading.Event()
    real_load = controlplane.source.follower.load_directory

    def held_load(*args: Any) -> LoadedDirectory:
        entered.set()
        release.wait(timeout=10)  # on the loop's thread, nothing could release it: the test then fails below
        return real_load(*args)

    monkeypatch.setattr(controlplane.source.follower, "load_directory", held_load)

    async def scenario() -> bool:
        plane = ControlPlane(ServeSettings(config_dirs=(str(tmp_path),), cache_dir=str(tmp_path / "cache")))
        reload = asyncio.create_task(plane.reload())
        await asyncio.to_thread(entered.wait, 10)
        ran_during_load = not reload.done() and not release.is_set()
        release.set()
        await reload
        assert [p.name for p in plane.loaded.config.plugins] == ["a"]
        return ran_during_load

    assert asyncio.run(scenario())
