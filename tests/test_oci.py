"""Modules pulled from a real registry (Debian's docker-registry on loopback): every image format, by tag
and by digest, Istio's and the module's meaning of sha256, the size cap and bad modules, TLS with a test
CA, basic and bearer-token auth, pull policies, and the cache that outlives a restart."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controlplane.admin import module_views
from controlplane.app import ControlPlane
from controlplane.image_reference import ImageReference, InvalidReference, parse_reference
from controlplane.model import ModuleFailed, ModuleKey, ModuleReady, ModuleStatus, RegistryCredential
from controlplane.modules.credentials import load_docker_config
from controlplane.modules.download import FetchSettings
from controlplane.modules.index import IndexEntry, ModuleIndex, expired
from controlplane.modules.policy import ModuleRequest, module_requests
from controlplane.modules.resolver import ModuleResolver, ResolverSettings, resolve_module
from controlplane.modules.store import ModuleStore
from controlplane.processes import controlplane_command
from controlplane.serve_settings import ServeSettings
from controlplane.source.directory import load_directory
from tests.registry import FORMATS, LocalCa, Registry, TokenIssuer, docker_config_json, start_registry, token_server
from tests.support import ORDER_MARKER_WASM, RATELIMIT_WASM, wasm_plugin_yaml

MODULE = RATELIMIT_WASM.read_bytes()
MODULE_SHA256 = hashlib.sha256(MODULE).hexdigest()
OTHER_MODULE = ORDER_MARKER_WASM.read_bytes()
LOGIN = ("puller", "pull-pass-4f7a")


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    return LocalCa.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory, local_ca: LocalCa) -> Iterator[Registry]:
    """TLS with the test CA, basic auth."""
    started = start_registry(tmp_path_factory.mktemp("private-registry"), tls=local_ca, login=LOGIN)
    yield started
    started.stop()


def plain(registry: Registry, **changes: object) -> FetchSettings:
    return FetchSettings(insecure_registries=frozenset({registry.host}), **changes)  # type: ignore[arg-type]


def resolve(
    url: str, settings: FetchSettings, tmp_path: Path, sha256: str = "", credentials: tuple = ()
) -> ModuleStatus:
    key = ModuleKey(url, sha256)
    return asyncio.run(resolve_module(key, ModuleStore(tmp_path / "store"), settings, credentials))


def reason(status: ModuleStatus) -> str:
    assert isinstance(status, ModuleFailed), status
    return status.reason


# --- references ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("oci://ghcr.io/acme/filter:1.0", ImageReference("ghcr.io", "acme/filter", "1.0", "")),
        ("ghcr.io/acme/filter", ImageReference("ghcr.io", "acme/filter", "latest", "")),
        ("oci://localhost:5000/f@sha256:" + "a" * 64, ImageReference("localhost:5000", "f", "", "sha256:" + "a" * 64)),
        ("127.0.0.1:5000/a/b/c:v2", ImageReference("127.0.0.1:5000", "a/b/c", "v2", "")),
        ("istio/filter:1", ImageReference("docker.io", "istio/filter", "1", "")),
        ("nginx", ImageReference("docker.io", "library/nginx", "latest", "")),
    ],
)
def test_references_are_read_as_istio_reads_them(url: str, expected: ImageReference) -> None:
    assert parse_reference(url) == expected


@pytest.mark.parametrize("url", ["oci://ghcr.io/Acme/filter:1", "oci://ghcr.io/acme/f@sha256:abc", "oci://h.io/a:b:c"])
def test_bad_references_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(InvalidReference, match="not a valid|digest must be"):
        parse_reference(url)


# --- formats, tags, digests, sha256 ----------------------------------------------------------------------


@pytest.mark.parametrize("image_format", FORMATS)
def test_every_image_format_is_pulled_by_tag_and_by_digest(
    registry: Registry, tmp_path: Path, image_format: str
) -> None:
    repository = f"formats/{image_format}"
    digest = registry.push(repository, "1.0", MODULE, image_format)
    for url in (f"oci://{registry.host}/{repository}:1.0", f"{registry.host}/{repository}@{digest}"):
        assert resolve(url, plain(registry), tmp_path) == ModuleReady(MODULE_SHA256, len(MODULE)), url
    assert (tmp_path / "store" / f"{MODULE_SHA256}.wasm").read_bytes() == MODULE


@pytest.mark.parametrize("image_format", ["wasm-2-layers", "oci-index"])
def test_sha256_is_the_manifest_digest_or_the_module_digest(
    registry: Registry, tmp_path: Path, image_format: str
) -> None:
    repository = f"sha/{image_format}"
    manifest_digest = registry.push(repository, "1.0", MODULE, image_format).removeprefix("sha256:")
    url = f"oci://{registry.host}/{repository}:1.0"
    ready = ModuleReady(MODULE_SHA256, len(MODULE))
    assert resolve(url, plain(registry), tmp_path, sha256=manifest_digest) == ready
    assert resolve(url, plain(registry), tmp_path, sha256=MODULE_SHA256) == ready
    wrong = reason(resolve(url, plain(registry), tmp_path, sha256="0" * 64))
    assert f"sha256 mismatch: expected {'0' * 64}, got {MODULE_SHA256}" in wrong
    assert manifest_digest in wrong


def test_a_module_over_the_size_cap_is_refused_before_download_and_after_unpacking(
    registry: Registry, tmp_path: Path
) -> None:
    registry.push("cap/artifact", "1", MODULE, "wasm-1-layer")
    registry.push("cap/image", "1", MODULE, "docker-image")
    small = plain(registry, max_bytes=len(MODULE) - 1)
    assert "over the limit" in reason(resolve(f"oci://{registry.host}/cap/artifact:1", small, tmp_path))
    assert "larger than the limit" in reason(resolve(f"oci://{registry.host}/cap/image:1", small, tmp_path))
    assert not (tmp_path / "store" / f"{MODULE_SHA256}.wasm").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<html>a login page, not a module</html>", "not a WebAssembly module"),
        (b"\0asm\x01\0\0\0\x01\xff\xff\xff", "module does not compile"),
        (b"\0asm\x01\0\0\0", "exports no proxy-wasm ABI version"),
    ],
)
def test_what_is_not_a_proxy_wasm_module_is_refused(
    registry: Registry, tmp_path: Path, content: bytes, expected: str
) -> None:
    registry.push("bad/module", "1", content, "wasm-2-layers")
    assert expected in reason(resolve(f"oci://{registry.host}/bad/module:1", plain(registry), tmp_path))


def test_a_manifest_without_a_module_and_a_missing_tag_are_clear_failures(registry: Registry, tmp_path: Path) -> None:
    config = registry.push_blob("nomodule/x", b"{}")
    layer = registry.push_blob("nomodule/x", b"plain text")
    registry.push_manifest(
        "nomodule/x",
        "1",
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "text/plain", **layer}],
        },
    )
    assert "holds no Wasm module" in reason(resolve(f"oci://{registry.host}/nomodule/x:1", plain(registry), tmp_path))
    assert "not found" in reason(resolve(f"oci://{registry.host}/nomodule/x:2", plain(registry), tmp_path))


# --- transport and auth ----------------------------------------------------------------------------------


def test_plain_http_is_used_only_for_insecure_registries(registry: Registry, tmp_path: Path) -> None:
    registry.push("transport/p", "1", MODULE)
    url = f"oci://{registry.host}/transport/p:1"
    refused = reason(resolve(url, FetchSettings(retries=0), tmp_path))
    assert "TLS error" in refused and "--insecure-registry" in refused
    assert isinstance(resolve(url, plain(registry), tmp_path), ModuleReady)


def test_a_private_registry_needs_its_ca_and_a_valid_login(
    private_registry: Registry, local_ca: LocalCa, tmp_path: Path
) -> None:
    private_registry.push("private/p", "1", MODULE)
    url = f"oci://{private_registry.host}/private/p:1"
    trusted = FetchSettings(registry_ca=str(local_ca.ca_file))
    right = (RegistryCredential(private_registry.host, *LOGIN),)
    wrong = (RegistryCredential(private_registry.host, LOGIN[0], "not-the-password"),)
    untrusted = reason(resolve(url, FetchSettings(), tmp_path, credentials=right))
    assert "certificate verify failed" in untrusted and "--registry-ca" in untrusted
    assert "requires a login and no credential is configured" in reason(resolve(url, trusted, tmp_path))
    refused = reason(resolve(url, trusted, tmp_path, credentials=wrong))
    assert "refused the credential" in refused and "not-the-password" not in refused
    assert isinstance(resolve(url, trusted, tmp_path, credentials=right), ModuleReady)
    from_docker_config = FetchSettings(registry_ca=str(local_ca.ca_file), docker_credentials=right)
    assert isinstance(resolve(url, from_docker_config, tmp_path), ModuleReady)


@pytest.mark.integration
def test_bearer_tokens_are_fetched_anonymously_or_with_the_login(tmp_path: Path) -> None:
    issuer = TokenIssuer.create(tmp_path)
    with token_server(issuer, LOGIN) as (token_port, scopes):
        token_registry = start_registry(
            tmp_path / "registry", token_auth=(issuer, f"http://127.0.0.1:{token_port}/token")
        )
        try:
            token_registry.push("public/p", "1", MODULE)
            token_registry.push("private/p", "1", MODULE)
            settings = FetchSettings(insecure_registries=frozenset({token_registry.host, f"127.0.0.1:{token_port}"}))
            login = (RegistryCredential(token_registry.host, *LOGIN),)
            host = token_registry.host
            assert isinstance(resolve(f"oci://{host}/public/p:1", settings, tmp_path), ModuleReady)
            assert "refused (HTTP 401)" in reason(resolve(f"oci://{host}/private/p:1", settings, tmp_path))
            assert isinstance(resolve(f"oci://{host}/private/p:1", settings, tmp_path, credentials=login), ModuleReady)
            assert "repository:private/p:pull" in scopes
            # A token service reached over plain HTTP must have been declared insecure: it gets the login.
            only_registry = FetchSettings(insecure_registries=frozenset({host}))
            refused = reason(resolve(f"oci://{host}/private/p:1", only_registry, tmp_path, credentials=login))
            assert "is not HTTPS" in refused
        finally:
            token_registry.stop()


# --- pull policies and the cache across restarts ---------------------------------------------------------


def plugin_requests(tmp_path: Path, *plugins: str) -> list[ModuleRequest]:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    for index, text in enumerate(plugins):
        (config_dir / f"plugin-{index}.yaml").write_text(text)
    loaded = load_directory([str(config_dir)])
    assert loaded.errors == ()
    return module_requests(loaded.config)


def plugin(name: str, url: str, policy: str = "", **fields: object) -> str:
    text = wasm_plugin_yaml(name, url, **fields)  # type: ignore[arg-type]
    return text.replace("spec:\n", f"spec:\n  imagePullPolicy: {policy}\n") if policy else text


def test_pull_policy_defaults_to_always_for_latest_and_digests_pin(tmp_path: Path) -> None:
    requests = plugin_requests(
        tmp_path,
        plugin("latest", "oci://r.io/p:latest"),
        plugin("untagged", "oci://r.io/p"),
        plugin("tagged", "oci://r.io/p:1"),
        plugin("always", "oci://r.io/p:2", "Always"),
        plugin("if-not-present", "oci://r.io/p:latest2", "IfNotPresent"),
        plugin("pinned", "oci://r.io/p:3", "Always", sha256=MODULE_SHA256),
        plugin("http", "https://r.io/p.wasm"),
    )
    always = {r.key.url: r.always for r in requests}
    assert always == {
        "oci://r.io/p:latest": True,
        "oci://r.io/p": True,
        "oci://r.io/p:1": False,
        "oci://r.io/p:2": True,
        "oci://r.io/p:latest2": False,
        "oci://r.io/p:3": False,
        "https://r.io/p.wasm": False,
    }


async def settle(resolver: ModuleResolver, requests: list[ModuleRequest]) -> dict[ModuleKey, ModuleStatus]:
    resolver.require(requests)
    await resolver.settled()
    return dict(resolver.statuses)


def new_resolver(cache: Path, registry: Registry) -> ModuleResolver:
    settings = ResolverSettings(fetch=plain(registry, retries=0))
    return ModuleResolver(ModuleStore(cache), ModuleIndex(cache), settings, lambda: None)


def test_always_pulls_again_when_the_plugin_changes_and_if_not_present_does_not(
    registry: Registry, tmp_path: Path
) -> None:
    registry.push("policy/p", "moving", MODULE)
    url = f"oci://{registry.host}/policy/p:moving"

    async def scenario(policy: str) -> tuple[ModuleStatus, ModuleStatus, ModuleStatus]:
        registry.push("policy/p", "moving", MODULE)
        resolver = new_resolver(tmp_path / policy, registry)
        first = await settle(resolver, plugin_requests(tmp_path / policy, plugin("p", url, policy)))
        registry.push("policy/p", "moving", OTHER_MODULE)
        same_spec = await settle(resolver, plugin_requests(tmp_path / policy, plugin("p", url, policy)))
        changed = plugin("p", url, policy, config={"requests_per_second": 5})
        new_spec = await settle(resolver, plugin_requests(tmp_path / policy, changed))
        [(_, a)], [(_, b)], [(_, c)] = first.items(), same_spec.items(), new_spec.items()
        return a, b, c

    other = ModuleReady(hashlib.sha256(OTHER_MODULE).hexdigest(), len(OTHER_MODULE))
    original = ModuleReady(MODULE_SHA256, len(MODULE))
    (tmp_path / "Always").mkdir()
    (tmp_path / "IfNotPresent").mkdir()
    assert asyncio.run(scenario("Always")) == (original, original, other)
    assert asyncio.run(scenario("IfNotPresent")) == (original, original, original)


def test_a_repull_of_an_unchanged_tag_asks_for_the_manifest_only(registry: Registry, tmp_path: Path) -> None:
    """Counted in the registry's own access log: a re-pull that finds the manifest the cached module came
    from downloads no blob, on a plugin change and after a restart; a new module under the tag is pulled."""
    registry.push("repull/p", "moving", MODULE)
    url = f"oci://{registry.host}/repull/p:moving"
    blobs, manifests = "/v2/repull/p/blobs/", "/v2/repull/p/manifests/moving"

    def pulled(limit: int) -> list[ModuleRequest]:
        return plugin_requests(tmp_path, plugin("p", url, "Always", config={"requests_per_second": limit}))

    async def counts() -> tuple[int, int]:
        return await asyncio.to_thread(
            lambda: (registry.requests_logged("GET", blobs), registry.requests_logged("GET", manifests))
        )

    async def scenario() -> list[tuple[list[ModuleStatus], tuple[int, int]]]:
        steps = []
        resolver = new_resolver(tmp_path / "cache", registry)
        steps.append((list((await settle(resolver, pulled(1))).values()), await counts()))
        steps.append((list((await settle(resolver, pulled(2))).values()), await counts()))
        restarted = new_resolver(tmp_path / "cache", registry)
        steps.append((list((await settle(restarted, pulled(2))).values()), await counts()))
        await asyncio.to_thread(registry.push, "repull/p", "moving", OTHER_MODULE)
        steps.append((list((await settle(restarted, pulled(3))).values()), await counts()))
        return steps

    first, changed, restarted, pushed = asyncio.run(scenario())
    original = [ModuleReady(MODULE_SHA256, len(MODULE))]
    assert first[0] == changed[0] == restarted[0] == original
    blob_gets, manifest_gets = first[1]
    assert changed[1] == (blob_gets, manifest_gets + 1), "the plugin change pulled the blob again"
    assert restarted[1] == (blob_gets, manifest_gets + 2), "the restart pulled the blob again"
    assert pushed[0] == [ModuleReady(hashlib.sha256(OTHER_MODULE).hexdigest(), len(OTHER_MODULE))]
    assert pushed[1][0] > blob_gets


@pytest.mark.integration
def test_after_a_restart_without_registry_every_cached_module_serves_and_always_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = start_registry(tmp_path / "registry")
    try:
        digest = registry.push("warm/p", "1.0", MODULE)
        registry.push("warm/p", "latest", MODULE)
    finally:
        registry.stop()
    pinned = plugin("pinned", f"oci://{registry.host}/warm/p@{digest}")
    tagged = plugin("tagged", f"oci://{registry.host}/warm/p:1.0", "IfNotPresent")
    latest = plugin("latest", f"oci://{registry.host}/warm/p:latest")
    requests = plugin_requests(tmp_path, pinned, tagged, latest)

    registry.start()
    try:
        before = asyncio.run(settle(new_resolver(tmp_path / "cache", registry), requests))
    finally:
        registry.stop()
    assert all(isinstance(s, ModuleReady) for s in before.values()), before

    caplog.set_level(logging.INFO, "controlplane.modules")
    restarted = new_resolver(tmp_path / "cache", registry)
    after = asyncio.run(settle(restarted, requests))
    by_url = {key.url.rsplit("/", 1)[-1]: status for key, status in after.items()}
    ready = ModuleReady(MODULE_SHA256, len(MODULE))
    assert by_url[f"p@{digest}"] == by_url["p:1.0"] == by_url["p:latest"] == ready
    # `Always` (here Istio's default for `:latest`) serves the cached copy, as a running server keeps the
    # module that was serving when a re-pull fails, and the pull is retried in the background.
    [latest_key] = [key for key in after if key.url.endswith(":latest")]
    assert restarted.records()[latest_key].retry_at is not None
    assert "cached copy: pulling it again" in caplog.text and "still serving" in caplog.text


def test_a_corrupt_cached_module_is_pulled_again(registry: Registry, tmp_path: Path) -> None:
    registry.push("corrupt/p", "1", MODULE)
    requests = plugin_requests(tmp_path, plugin("p", f"oci://{registry.host}/corrupt/p:1"))
    asyncio.run(settle(new_resolver(tmp_path / "cache", registry), requests))
    (tmp_path / "cache" / f"{MODULE_SHA256}.wasm").write_bytes(MODULE[:100])
    after = asyncio.run(settle(new_resolver(tmp_path / "cache", registry), requests))
    assert list(after.values()) == [ModuleReady(MODULE_SHA256, len(MODULE))]
    assert (tmp_path / "cache" / f"{MODULE_SHA256}.wasm").read_bytes() == MODULE


def test_unused_modules_are_purged_after_the_expiry(tmp_path: Path) -> None:
    entries = {"used": IndexEntry("a" * 64, 1, 0.0), "old": IndexEntry("b" * 64, 1, 0.0), "new": IndexEntry("c", 1, 90)}
    assert expired(entries, ["used"], now=100.0, expiry_seconds=50.0) == {"old"}

    store = ModuleStore(tmp_path)
    kept, dropped, recent = store.put(MODULE), store.put(OTHER_MODULE), store.put(b"\0asm\1\0\0\0")
    now = time.time()
    for sha256 in (kept, dropped):
        os.utime(store.path(sha256), (now - 1000, now - 1000))
    assert store.purge({kept}, older_than=now - 500) == [dropped]
    assert store.has(kept) and store.has(recent) and not store.has(dropped)


def test_a_removed_plugins_module_is_purged_and_one_in_use_stays(registry: Registry, tmp_path: Path) -> None:
    """Through the server's own reload: the plugin's file goes, and with a short expiry its module leaves
    the cache dir while the other plugin's stays."""
    registry.push("purge/kept", "1", MODULE)
    registry.push("purge/dropped", "1", OTHER_MODULE)
    config_dir, cache = tmp_path / "config", tmp_path / "cache"
    config_dir.mkdir()
    (config_dir / "kept.yaml").write_text(plugin("kept", f"oci://{registry.host}/purge/kept:1"))
    (config_dir / "dropped.yaml").write_text(plugin("dropped", f"oci://{registry.host}/purge/dropped:1"))
    modules = ResolverSettings(
        fetch=plain(registry, retries=0), module_expiry_seconds=0.2, purge_interval_seconds=0.05, tick_seconds=0.05
    )
    kept, dropped = cache / f"{MODULE_SHA256}.wasm", cache / f"{hashlib.sha256(OTHER_MODULE).hexdigest()}.wasm"

    async def scenario() -> None:
        plane = ControlPlane(ServeSettings(config_dirs=(str(config_dir),), cache_dir=str(cache), modules=modules))
        await plane.reload()
        await plane.modules.settled()
        assert kept.is_file() and dropped.is_file()
        purging = asyncio.create_task(plane.modules.run())
        try:
            (config_dir / "dropped.yaml").unlink()
            await plane.reload()
            while dropped.exists():  # bounded by the test's timeout below
                await asyncio.sleep(0.05)
        finally:
            purging.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert kept.read_bytes() == MODULE
    assert [e.sha256 for e in ModuleIndex(cache).entries.values()] == [MODULE_SHA256]


@pytest.mark.integration
def test_a_failed_module_shows_when_it_is_tried_again(tmp_path: Path) -> None:
    down = start_registry(tmp_path / "registry")
    down.stop()
    url = f"oci://{down.host}/retry/p:1"
    requests = plugin_requests(tmp_path, plugin("p", url))
    plugins = load_directory([str(tmp_path / "config")]).config.plugins
    settings = ResolverSettings(fetch=plain(down, retries=0), retry_first_seconds=60.0)

    async def scenario() -> tuple[list[dict[str, object]], float]:
        resolver = ModuleResolver(
            ModuleStore(tmp_path / "cache"), ModuleIndex(tmp_path / "cache"), settings, lambda: None
        )
        await settle(resolver, requests)
        now = time.time()
        return module_views(plugins, resolver.records(), now, time.monotonic()), now

    [view], now = asyncio.run(scenario())
    assert view["state"] == "failed"
    in_seconds = view["next_retry_in_seconds"]
    # 60s give or take the backoff's jitter, less the time taken since it was scheduled.
    assert isinstance(in_seconds, float) and 30 <= in_seconds <= 60 * 1.25
    at = datetime.datetime.fromisoformat(str(view["next_retry_at"])).timestamp()
    assert abs(at - (now + in_seconds)) < 5
    assert module_views(plugins, {}, now, 0.0)[0]["state"] == "fetching", "nothing known of it yet"


def test_the_index_survives_a_restart_and_a_corrupt_one_is_ignored(tmp_path: Path) -> None:
    key = ModuleKey("oci://r.io/p:1", "", "default/pull")
    ModuleIndex(tmp_path).record(key, MODULE_SHA256, len(MODULE), 5.0)
    assert ModuleIndex(tmp_path).get(key) == IndexEntry(MODULE_SHA256, len(MODULE), 5.0)
    assert ModuleIndex(tmp_path).get(ModuleKey("oci://r.io/p:1", "")) is None, "another namespace's secret"
    (tmp_path / "index.json").write_text("{not json")
    assert ModuleIndex(tmp_path).entries == {}


def test_a_slow_download_holds_up_no_other_module_and_one_url_is_fetched_once_at_a_time(
    registry: Registry, tmp_path: Path
) -> None:
    release = threading.Event()
    active, most_active = [0], [0]
    lock = threading.Lock()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                active[0] += 1
                most_active[0] = max(most_active[0], active[0])
            release.wait(20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(MODULE)))
            self.end_headers()
            self.wfile.write(MODULE)
            with lock:
                active[0] -= 1

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    registry.push("concurrent/fast", "1", MODULE)
    slow_url = f"http://127.0.0.1:{server.server_address[1]}/slow.wasm"
    slow_keys = [ModuleKey(slow_url, ""), ModuleKey(slow_url, MODULE_SHA256)]
    fast_key = ModuleKey(f"oci://{registry.host}/concurrent/fast:1", "")

    async def scenario() -> tuple[ModuleStatus | None, list[ModuleStatus | None], list[ModuleStatus | None]]:
        resolver = new_resolver(tmp_path / "cache", registry)
        resolver.require(ModuleRequest(key, False, "r") for key in [*slow_keys, fast_key])
        for _ in range(400):  # bounded: the fast module must not wait for the slow one
            if fast_key in resolver.statuses:
                break
            await asyncio.sleep(0.05)
        while_slow = (resolver.statuses.get(fast_key), [resolver.statuses.get(k) for k in slow_keys])
        release.set()
        await resolver.settled()
        return *while_slow, [resolver.statuses.get(k) for k in slow_keys]

    try:
        fast, slow_meanwhile, slow_after = asyncio.run(scenario())
    finally:
        release.set()
        server.shutdown()
    ready = ModuleReady(MODULE_SHA256, len(MODULE))
    assert fast == ready
    assert slow_meanwhile == [None, None]
    assert slow_after == [ready, ready]
    assert most_active[0] == 1, "two keys of one url were downloaded at the same time"


@pytest.mark.parametrize("login_from", ["docker-config", "pull-secret"])
def test_render_pulls_private_modules_with_the_flags_and_secrets_of_serve(
    private_registry: Registry, local_ca: LocalCa, tmp_path: Path, login_from: str
) -> None:
    private_registry.push("render/p", "1", MODULE)
    login = docker_config_json(private_registry.host, *LOGIN)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    flags = ["--registry-ca", str(local_ca.ca_file)]
    url = f"oci://{private_registry.host}/render/p:1"
    if login_from == "pull-secret":
        encoded = base64.b64encode(login.encode()).decode()
        (config_dir / "secret.yaml").write_text(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: login\n  namespace: default\n"
            f"type: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {encoded}\n"
        )
        text = wasm_plugin_yaml("p", url).replace("spec:\n", "spec:\n  imagePullSecret: login\n")
    else:
        (tmp_path / "config.json").write_text(login)
        flags += ["--docker-config", str(tmp_path / "config.json")]
        text = wasm_plugin_yaml("p", url)
    (config_dir / "plugin.yaml").write_text(text)
    result = subprocess.run(
        controlplane_command("render", str(config_dir), *flags),
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"},
    )
    assert result.returncode == 0, result.stderr
    [extension] = yaml.safe_load(result.stdout)["extension_configs"]
    vm_config = extension["typed_config"]["config"]["vm_config"]
    assert vm_config["vm_id"] == MODULE_SHA256
    assert vm_config["code"]["local"]["inline_bytes"] == f"<{len(MODULE)} bytes of Wasm>"
    assert LOGIN[1] not in result.stdout + result.stderr


def _helper(folder: Path, name: str, answers: dict[str, tuple[str, str]]) -> None:
    """A real `docker-credential-<name>` program: the login for a host read on stdin, or exit 1."""
    logins = {host: {"ServerURL": host, "Username": user, "Secret": secret} for host, (user, secret) in answers.items()}
    program = folder / f"docker-credential-{name}"
    program.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"logins = {logins!r}\n"
        "host = sys.stdin.read().strip()\n"
        "if sys.argv[1:] != ['get'] or host not in logins:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "print(json.dumps(logins[host]))\n"
    )
    program.chmod(0o755)


def test_logins_come_from_docker_credential_helpers(
    private_registry: Registry, local_ca: LocalCa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helpers are real programs on PATH, as `docker-credential-ecr-login` and friends are."""
    private_registry.push("helped/p", "1", MODULE)
    url = f"oci://{private_registry.host}/helped/p:1"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _helper(bin_dir, "right", {private_registry.host: LOGIN})
    _helper(bin_dir, "wrong", {private_registry.host: (LOGIN[0], "not-the-password")})
    _helper(bin_dir, "empty", {})
    _helper(bin_dir, "token", {private_registry.host: ("<token>", "an-identity-token")})
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def with_config(config: dict[str, object]) -> FetchSettings:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        credentials, helpers = load_docker_config(str(path))
        return FetchSettings(
            registry_ca=str(local_ca.ca_file), docker_credentials=credentials, credential_helpers=helpers
        )

    assert isinstance(
        resolve(url, with_config({"credHelpers": {private_registry.host: "right"}}), tmp_path), ModuleReady
    )
    assert isinstance(resolve(url, with_config({"credsStore": "right"}), tmp_path), ModuleReady)
    refused = reason(resolve(url, with_config({"credHelpers": {private_registry.host: "wrong"}}), tmp_path))
    assert "refused the credential" in refused and "not-the-password" not in refused
    nothing = reason(resolve(url, with_config({"credsStore": "empty"}), tmp_path))
    assert "requires a login and no credential is configured" in nothing
    for store in ("not-installed", "token"):
        assert "requires a login" in reason(resolve(url, with_config({"credsStore": store}), tmp_path))
    # credHelpers wins over auths, as in the Docker CLI.
    wrong_auth = {"auths": {private_registry.host: {"username": LOGIN[0], "password": "nope"}}}
    helped = with_config({**wrong_auth, "credHelpers": {private_registry.host: "right"}})
    assert isinstance(resolve(url, helped, tmp_path), ModuleReady)
