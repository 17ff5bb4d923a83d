"""The module resolver's own state, in-process with `file://` modules: one record per module key, dropped
whole once no plugin wants the module, and the status view read from those records."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from pathlib import Path

from controlplane.admin import module_views
from controlplane.model import ModuleFailed, ModuleKey, ModuleReady
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import ModuleRequest
from controlplane.modules.resolver import ModuleResolver, ResolverSettings
from controlplane.modules.store import ModuleStore
from tests.support import RATELIMIT_WASM
from tests.test_translation import plugin


def resolver(tmp_path: Path) -> ModuleResolver:
    cache = tmp_path / "cache"
    return ModuleResolver(
        ModuleStore(cache), ModuleIndex(cache), ResolverSettings(retry_first_seconds=60), lambda: None
    )


def request(url: str, sha256: str = "", revision: str = "1") -> ModuleRequest:
    return ModuleRequest(ModuleKey(url, sha256), always=False, revision=revision)


def copies(tmp_path: Path, count: int) -> list[str]:
    """`file://` urls of copies of one module: each url is a module of its own."""
    urls = []
    for index in range(count):
        path = tmp_path / f"module-{index}.wasm"
        shutil.copy(RATELIMIT_WASM, path)
        urls.append(f"file://{path}")
    return urls


def test_modules_no_plugin_wants_are_forgotten_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        modules = resolver(tmp_path)
        wanted = [request(url) for url in copies(tmp_path, 12)]
        modules.require(wanted)
        await modules.settled()
        assert len(modules.records()) == 12
        assert all(isinstance(s, ModuleReady) for s in modules.statuses.values())
        modules.require(wanted[:1])
        assert list(modules.records()) == [wanted[0].key]
        modules.require([])  # a local module is read again on every load: its fetch ends first
        await modules.settled()
        assert modules.records() == {} and modules.statuses == {}

    asyncio.run(scenario())


def test_bytes_in_memory_go_with_the_last_plugin_that_wants_them(tmp_path: Path) -> None:
    """Proxies get modules inside their configs, from memory: a module no plugin wants is not held."""
    cache = tmp_path / "cache"
    store = ModuleStore(cache, just_put_seconds=0)
    [url] = copies(tmp_path, 1)

    async def scenario() -> None:
        modules = ModuleResolver(store, ModuleIndex(cache), ResolverSettings(retry_first_seconds=60), lambda: None)
        modules.require([request(url)])
        await modules.settled()
        [status] = modules.statuses.values()
        assert isinstance(status, ModuleReady)
        store.path(status.sha256).unlink()
        assert store.read(status.sha256) == RATELIMIT_WASM.read_bytes(), "served from memory"
        modules.require([])
        await modules.settled()
        assert store.read(status.sha256) is None

    asyncio.run(scenario())


def test_keys_of_one_url_share_its_lock_until_the_last_goes(tmp_path: Path) -> None:
    [url] = copies(tmp_path, 1)
    by_content = request(url, _sha256(RATELIMIT_WASM))
    plain = request(url)

    async def scenario() -> None:
        modules = resolver(tmp_path)
        modules.require([plain, by_content])
        await modules.settled()
        records = modules.records()
        assert records[plain.key].url_lock is records[by_content.key].url_lock, "one url is fetched once at a time"
        modules.require([by_content])
        await modules.settled()
        assert list(modules.records()) == [by_content.key]
        modules.require([])
        await modules.settled()
        assert modules.records() == {}

    asyncio.run(scenario())


def test_a_module_dropped_while_being_fetched_goes_once_its_fetch_ends_and_can_come_back(tmp_path: Path) -> None:
    [url] = copies(tmp_path, 1)

    async def scenario() -> None:
        modules = resolver(tmp_path)
        modules.require([request(url)])  # the fetch is a task that has not run yet
        modules.require([])
        assert modules.statuses == {}, "not wanted: not served"
        assert list(modules.records()) == [ModuleKey(url, "")], "kept while its fetch is under way"
        await modules.settled()
        assert modules.records() == {}

        modules.require([request(url)])
        modules.require([])
        modules.require([request(url, revision="2")])
        await modules.settled()
        assert modules.statuses == {
            ModuleKey(url, ""): ModuleReady(_sha256(RATELIMIT_WASM), RATELIMIT_WASM.stat().st_size)
        }

    asyncio.run(scenario())


def test_a_failed_module_is_retried_and_the_view_shows_when(tmp_path: Path) -> None:
    missing = f"file://{tmp_path}/missing.wasm"
    p = plugin("p", url=missing)

    async def scenario() -> None:
        modules = resolver(tmp_path)
        modules.require([request(missing)])
        await modules.settled()
        record = modules.records()[p.module]
        assert isinstance(record.status, ModuleFailed) and record.failures == 1
        assert record.retry_at is not None
        now, clock = time.time(), time.monotonic()
        [view] = module_views([p], modules.records(), now, clock)
        assert view["state"] == "failed" and "missing.wasm" in view["reason"]
        # 60 s first retry, give or take the backoff's jitter, less the time taken since it was scheduled.
        assert 60 * 0.75 - 5 <= view["next_retry_in_seconds"] <= 60 * 1.25
        modules.require([])
        assert module_views([p], modules.records(), now, clock)[0]["state"] == "fetching", "nothing known any more"

    asyncio.run(scenario())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
