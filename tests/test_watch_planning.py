"""The watcher's decisions, on real folders and links: which events matter, which folders to watch, and
when a burst of events is over."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from controlplane.source.directory import find_yaml_files
from controlplane.source.settle import SettleSettings, git_busy, settle
from controlplane.source.watcher import is_noise, matters, plan_watches, symlinks_on_path


@pytest.mark.parametrize(
    "name",
    [".a.yaml.swp", ".a.yaml.swx", "4913", "a.yaml~", "#a.yaml#", ".#a.yaml", "a.yaml___jb_tmp___", ".git/index.lock"],
)
def test_editor_and_git_files_are_noise(name: str) -> None:
    assert is_noise(f"/config/{name}")


@pytest.mark.parametrize("name", ["a.yaml", "..data", "..2024_01_01", ".a.yaml.tmp", "current", "plugins"])
def test_names_that_can_lead_to_config_are_not_noise(name: str) -> None:
    assert not is_noise(f"/config/{name}")


def test_which_events_matter() -> None:
    assert matters(FileMovedEvent("/c/.a.yaml.swp", "/c/a.yaml")), "an editor's rename onto the real name"
    assert matters(FileMovedEvent("/c/..data_tmp", "/c/..data")), "the ConfigMap swap"
    assert matters(FileCreatedEvent("/c/plugins")), "a new folder or link, whatever its name"
    assert matters(FileModifiedEvent("/c/a.yaml")) and matters(FileClosedEvent("/c/a.yml"))
    assert not matters(FileModifiedEvent("/c/notes.txt")), "content the loader never reads"
    assert not matters(FileModifiedEvent("/c/.a.yaml.swp"))
    assert not matters(FileMovedEvent("/c/.git/index.lock", "/c/.git/index"))
    assert not matters(FileOpenedEvent("/c/a.yaml")) and not matters(FileClosedNoWriteEvent("/c/a.yaml"))
    assert not matters(DirModifiedEvent("/c"))


def test_symlinks_on_the_way_to_a_config_dir_are_all_found(tmp_path: Path) -> None:
    (tmp_path / "..2024" / "sub").mkdir(parents=True)
    os.symlink("..2024", tmp_path / "..data")
    os.symlink("..data/sub", tmp_path / "current")
    os.symlink(str(tmp_path / "current"), tmp_path / "absolute")
    assert symlinks_on_path(str(tmp_path / "absolute")) == [
        str(tmp_path / "absolute"),
        str(tmp_path / "current"),
        str(tmp_path / "..data"),
    ]
    assert symlinks_on_path(str(tmp_path / "..2024" / "sub" / ".." / "sub")) == []


def test_watches_follow_the_links_and_the_folders_they_lead_to(tmp_path: Path) -> None:
    target = tmp_path / "worktrees" / "one"
    target.mkdir(parents=True)
    outside = tmp_path / "shared"
    outside.mkdir()
    os.symlink(outside, target / "shared")
    os.symlink("worktrees/one", tmp_path / "current")
    watches = {(w.folder, w.recursive, w.names) for w in plan_watches([str(tmp_path / "current")])}
    assert watches == {
        (str(tmp_path), False, frozenset({"current"})),
        (str(target), True, None),
        (str(outside), True, None),
    }
    before = {w for w in plan_watches([str(tmp_path / "current")]) if w.recursive and w.folder == str(target)}
    os.rename(target, tmp_path / "worktrees" / "old")
    target.mkdir()
    after = {w for w in plan_watches([str(tmp_path / "current")]) if w.recursive and w.folder == str(target)}
    assert before != after, "a folder replaced under the same name is watched anew"


def test_a_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    os.symlink(tmp_path, tmp_path / "loop")
    assert find_yaml_files([str(tmp_path)]).paths == [str(tmp_path / "a.yaml")]


def test_git_busy_while_its_index_lock_exists_in_any_enclosing_work_tree(tmp_path: Path) -> None:
    config = tmp_path / "repo" / "deploy" / "config"
    config.mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir()
    assert not git_busy([str(config)])
    (tmp_path / "repo" / ".git" / "index.lock").write_text("")
    assert git_busy([str(config)])

    worktree = tmp_path / "linked"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {tmp_path / 'repo' / '.git' / 'worktrees' / 'linked'}\n")
    (tmp_path / "repo" / ".git" / "worktrees" / "linked").mkdir(parents=True)
    assert not git_busy([str(worktree)])
    (tmp_path / "repo" / ".git" / "worktrees" / "linked" / "index.lock").write_text("")
    assert git_busy([str(worktree)])


def test_settle_waits_for_the_burst_and_for_git_to_finish() -> None:
    async def scenario() -> list[str]:
        wanted = asyncio.Event()
        steps: list[str] = []
        git = {"running": True}
        settings = SettleSettings(quiet_seconds=0.01, longest_burst_seconds=60, longest_git_seconds=60)

        async def git_checkout() -> None:
            for _ in range(20):  # a burst of events while git holds its lock
                wanted.set()
                await asyncio.sleep(0.001)
            steps.append("git done")
            git["running"] = False

        writer = asyncio.create_task(git_checkout())
        await settle(wanted, settings, lambda: git["running"])
        steps.append("settled")
        await writer
        return steps

    assert asyncio.run(scenario()) == ["git done", "settled"]


def test_settle_gives_up_on_a_lock_git_left_behind() -> None:
    settings = SettleSettings(quiet_seconds=0.01, longest_burst_seconds=0.02, longest_git_seconds=0.05)
    asyncio.run(settle(asyncio.Event(), settings, lambda: True))  # returns: a stale lock cannot stop reloads
