"""The config directory as real deployments change it (editors, git, git-sync, Kubernetes ConfigMaps,
deploy scripts), with the real server and a real Envoy observing each change, or observing that a bad one
did not take. The order-marker plugin appends its `name` to the request's X-Plugin-Order header, so what
Envoy runs is read from httpbin's echo of the request."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.processes import controlplane_command
from tests.support import (
    ORDER_MARKER_WASM,
    ControlPlaneProcess,
    EnvoyProcess,
    Process,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
    write_atomically,
)

MARKER_FILTER = "extensions.istio.io/wasmplugin/default.marker"


def marker(version: str, name: str = "marker") -> str:
    return wasm_plugin_yaml(
        name,
        f"file://{ORDER_MARKER_WASM}",
        selector={"app": "httpbin"},
        plugin_name="order-marker",
        config={"name": version},
    )


@dataclass
class Served:
    control_plane: ControlPlaneProcess
    envoy: EnvoyProcess
    port: int

    def order(self) -> str:
        """The plugins that ran on a request, in order, by their configured name."""
        return http_get(self.port, "/headers").json()["headers"].get("X-Plugin-Order", "")

    def wait_order(self, expected: str, what: str) -> None:
        wait_for(lambda: self.order() == expected, what=what)

    def errors(self) -> list[str]:
        return self.control_plane.status()["errors"]


def populate(folder: Path, sidecar: str, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sidecar.yaml").write_text(sidecar)
    (folder / "marker.yaml").write_text(marker(version))


def serve(tmp_path: Path, processes: list[Process], config_dir: Path, port: int, *extra: str) -> Served:
    control_plane = start_control_plane(processes, config_dir, tmp_path, *extra)
    envoy = start_envoy(processes, tmp_path, control_plane.xds_port, "httpbin-1", labels={"app": "httpbin"})
    served = Served(control_plane, envoy, port)
    wait_for(lambda: http_get(port).status == 200, what="the listener to serve")
    return served


def swap_symlink(link: Path, target: str) -> None:
    """As git-sync and the kubelet do: a new link beside the old one, renamed over it."""
    temporary = link.with_name(link.name + "-tmp")
    os.symlink(target, temporary)
    os.replace(temporary, link)


@pytest.fixture
def sidecar(httpbin_port: int) -> tuple[str, int]:
    port = free_port()
    return sidecar_yaml("httpbin", port, httpbin_port, {"app": "httpbin"}), port


def test_files_created_changed_renamed_and_deleted_in_nested_folders(
    tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "sidecar.yaml").write_text(sidecar[0])
    served = serve(tmp_path, processes, config, sidecar[1])
    assert served.order() == ""

    nested = config / "teams" / "web" / "plugins"
    nested.mkdir(parents=True)
    (nested / "marker.yaml").write_text(marker("created"))
    served.wait_order("created", "a file created in a new nested folder to apply")

    (nested / "marker.yaml").write_text(marker("changed in place"))
    served.wait_order("changed in place", "a file rewritten in place to apply")

    os.rename(nested / "marker.yaml", config / "teams" / "marker.yml")
    wait_for(
        lambda: any(
            s["source"].startswith(str(config / "teams" / "marker.yml"))
            for s in served.control_plane.status()["serving"]
        ),
        what="the renamed file to be the source",
    )
    assert served.order() == "changed in place"

    # vim's save: a swap file, the write test file, the old version kept as a backup, the new one written.
    target = config / "teams" / "marker.yml"
    swap = target.with_name(".marker.yml.swp")
    swap.write_text("vim swap data")
    (target.parent / "4913").write_text("")
    (target.parent / "4913").unlink()
    os.rename(target, target.with_name("marker.yml~"))
    target.write_text(marker("saved by an editor"))
    target.with_name("marker.yml~").unlink()
    swap.unlink()
    served.wait_order("saved by an editor", "an editor's save to apply")

    # emacs: a lock symlink and an autosave file beside the real one, then an atomic save.
    os.symlink("user@host.1234", target.with_name(".#marker.yml"))
    target.with_name("#marker.yml#").write_text(marker("autosaved, never config"))
    write_atomically(target, marker("saved by emacs"))
    served.wait_order("saved by emacs", "an atomic save to apply")
    target.with_name(".#marker.yml").unlink()
    target.with_name("#marker.yml#").unlink()

    shutil.rmtree(config / "teams")
    served.wait_order("", "a deleted folder to take its plugins with it")
    assert served.errors() == []


def test_config_dir_that_is_a_symlink_swapped_by_git_sync(
    tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]
) -> None:
    root = tmp_path / "git"
    populate(root / ".worktrees" / "one", sidecar[0], "one")
    os.symlink(".worktrees/one", root / "current")
    served = serve(tmp_path, processes, root / "current", sidecar[1])
    served.wait_order("one", "the first revision")

    populate(root / ".worktrees" / "two", sidecar[0], "two")
    swap_symlink(root / "current", ".worktrees/two")
    shutil.rmtree(root / ".worktrees" / "one")
    served.wait_order("two", "the swapped link to apply")

    # The watch moved with the link: a change inside the new target is seen.
    write_atomically(root / ".worktrees" / "two" / "marker.yaml", marker("two, edited"))
    served.wait_order("two, edited", "an edit in the new target to apply")

    # A revision with a broken plugin: reported, and the last good version keeps running.
    populate(root / ".worktrees" / "three", sidecar[0], "three")
    broken = marker("three").replace("pluginName: order-marker", "pluginName: order-marker\n  phase: LATE")
    (root / ".worktrees" / "three" / "marker.yaml").write_text(broken)
    swap_symlink(root / "current", ".worktrees/three")
    wait_for(lambda: any("spec.phase" in e for e in served.errors()), what="the bad revision to be reported")
    (error,) = served.errors()
    assert error.startswith(f"{root / 'current' / 'marker.yaml'}:"), error
    assert served.order() == "two, edited"

    populate(root / ".worktrees" / "four", sidecar[0], "four")
    swap_symlink(root / "current", ".worktrees/four")
    served.wait_order("four", "the fixed revision to apply")
    assert served.errors() == []


def test_kubernetes_configmap_data_swap(tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]) -> None:
    """The kubelet's layout: files are links through `..data`, which links to a timestamped folder; an
    update writes a new folder and renames a new `..data` link over the old one."""
    mount = tmp_path / "configmap"
    populate(mount / "..2024_01_01_00_00_00.1", sidecar[0], "first")
    os.symlink("..2024_01_01_00_00_00.1", mount / "..data")
    for name in ("sidecar.yaml", "marker.yaml"):
        os.symlink(f"..data/{name}", mount / name)
    served = serve(tmp_path, processes, mount, sidecar[1])
    served.wait_order("first", "the first version")

    populate(mount / "..2024_01_01_00_01_00.2", sidecar[0], "second")
    swap_symlink(mount / "..data", "..2024_01_01_00_01_00.2")
    shutil.rmtree(mount / "..2024_01_01_00_00_00.1")
    served.wait_order("second", "the ConfigMap update to apply")

    # A key added to the ConfigMap: the new folder, the swap, then the new link.
    third = mount / "..2024_01_01_00_02_00.3"
    populate(third, sidecar[0], "third")
    (third / "extra.yaml").write_text(marker("extra", name="zz-extra"))
    swap_symlink(mount / "..data", third.name)
    os.symlink("..data/extra.yaml", mount / "extra.yaml")
    served.wait_order("third,extra", "the new key to apply")
    assert served.errors() == []


def test_config_dir_replaced_as_a_whole(tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]) -> None:
    config = tmp_path / "deploy" / "config"
    populate(config, sidecar[0], "old")
    served = serve(tmp_path, processes, config, sidecar[1])
    served.wait_order("old", "the first version")

    # A deploy script: build beside, rename the old one away, rename the new one in.
    populate(tmp_path / "deploy" / "config.new", sidecar[0], "new")
    os.rename(config, tmp_path / "deploy" / "config.old")
    os.rename(tmp_path / "deploy" / "config.new", config)
    served.wait_order("new", "the replaced folder to apply")
    write_atomically(config / "marker.yaml", marker("new, edited"))
    served.wait_order("new, edited", "an edit in the new folder to apply")

    # Deleted and made again: the new folder may even get the old one's inode.
    shutil.rmtree(config)
    config.mkdir()
    (config / "sidecar.yaml").write_text(sidecar[0])
    (config / "marker.yaml").write_text(marker("recreated"))
    served.wait_order("recreated", "the recreated folder to apply")
    write_atomically(config / "marker.yaml", marker("recreated, edited"))
    served.wait_order("recreated, edited", "an edit in the recreated folder to apply")


def test_a_file_seen_half_written_keeps_its_previous_version_until_the_writer_closes_it(
    tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]
) -> None:
    config = tmp_path / "config"
    populate(config, sidecar[0], "before")
    served = serve(tmp_path, processes, config, sidecar[1])
    served.wait_order("before", "the first version")

    text = marker("after")
    with open(config / "marker.yaml", "w") as handle:  # truncates: the file is empty now
        handle.write(text[: len(text) // 2])
        handle.flush()
        # Another change makes the server reload while this file is open and cut short.
        (config / "other.yaml").write_text(marker("other", name="other"))
        served.wait_order("before,other", "the other change to apply")
        status = served.control_plane.status()["files"][str(config / "marker.yaml")]
        assert status["state"].startswith("being written"), status
        handle.write(text[len(text) // 2 :])
    served.wait_order("after,other", "the completed write to apply")
    assert served.errors() == []


def test_a_burst_of_a_hundred_changes_during_a_git_checkout_is_one_push(
    tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]
) -> None:
    config = tmp_path / "repo"
    populate(config, sidecar[0], "v0")
    (config / ".git").mkdir()
    served = serve(tmp_path, processes, config, sidecar[1])
    served.wait_order("v0", "the first version")
    reloads = f"extension_config_discovery.http_filter.{MARKER_FILTER}.config_reload"
    listener_updates = "listener_manager.lds.update_success"
    before = served.envoy.stats()

    # git takes its index lock, rewrites the work tree file by file, and lets go.
    lock = config / ".git" / "index.lock"
    lock.write_text("")
    for index in range(1, 51):
        write_atomically(config / "marker.yaml", marker(f"v{index}"))
        (config / f"unrelated-{index}.yaml").write_text(marker("elsewhere", name=f"u{index}").replace("httpbin", "web"))
        if index == 25:
            time.sleep(0.5)  # git writing a large file: a pause far longer than the quiet time between events
    lock.unlink()
    served.wait_order("v50", "the end state of the checkout")
    after = served.envoy.stats()
    assert after[reloads] - before[reloads] == 1, "one ECDS update, not one per intermediate state"
    assert after[listener_updates] == before[listener_updates]


def test_a_change_no_event_reports_is_found_by_the_periodic_rescan(
    tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]
) -> None:
    """A file symlinked from outside the directory and edited in place: nothing below the directory
    changes, so no watch reports it."""
    config, outside = tmp_path / "config", tmp_path / "elsewhere"
    config.mkdir()
    outside.mkdir()
    (config / "sidecar.yaml").write_text(sidecar[0])
    (outside / "marker.yaml").write_text(marker("before"))
    os.symlink(outside / "marker.yaml", config / "marker.yaml")
    served = serve(tmp_path, processes, config, sidecar[1], "--resync-interval", "0.5")
    served.wait_order("before", "the first version")
    (outside / "marker.yaml").write_text(marker("after"))
    served.wait_order("after", "the rescan to find the change")


def test_a_duplicate_in_another_file_is_reported_naming_both_and_does_not_take(
    tmp_path: Path, processes: list[Process], sidecar: tuple[str, int]
) -> None:
    config = tmp_path / "config"
    populate(config, sidecar[0], "original")
    served = serve(tmp_path, processes, config, sidecar[1])
    served.wait_order("original", "the first version")

    (config / "a-copy.yaml").write_text(marker("copy"))
    # A change that is allowed to apply, after the duplicate: once it shows, the duplicate was looked at.
    (config / "other.yaml").write_text(marker("other", name="other"))
    served.wait_order("original,other", "the other change to apply")
    (error,) = served.errors()
    assert error.startswith(f"{config / 'a-copy.yaml'}:1: metadata.name: WasmPlugin default/marker is declared")
    assert str(config / "marker.yaml") in error and "serving" in error

    result = subprocess.run(controlplane_command("validate", str(config)), capture_output=True, text=True)
    # Without a history, validate names both files too (and which one a fresh server would serve).
    assert result.returncode == 1
    assert str(config / "a-copy.yaml") in result.stderr and str(config / "marker.yaml") in result.stderr
