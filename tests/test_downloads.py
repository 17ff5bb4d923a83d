"""Plain http(s) downloads against real servers on loopback: a login in the url sent as basic auth to its
own host only and never shown, an overall deadline against a server that drips, and the disk work of a
fetch kept off the event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane.model import ModuleFailed, ModuleKey, ModuleReady, ModuleStatus
from controlplane.modules.download import FetchSettings
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import ModuleRequest
from controlplane.modules.resolver import ModuleResolver, ResolverSettings, resolve_module
from controlplane.modules.store import ModuleStore
from controlplane.redaction import redact
from tests.support import RATELIMIT_WASM

MODULE = RATELIMIT_WASM.read_bytes()
READY = ModuleReady(hashlib.sha256(MODULE).hexdigest(), len(MODULE))
USER, PASSWORD, TOKEN = "alice", "s3cret@pw", "TOPSECRET"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, urllib.parse.quote(PASSWORD, safe=""), TOKEN, BASIC.split()[1])
DRIP_SECONDS = 10.0


@dataclass
class Server:
    """Serves MODULE at `/plugin.wasm`; `/private.wasm` only with the login; `/broken.wasm` answers 500;
    `/same-host.wasm` and `/elsewhere.wasm` redirect to `/private.wasm` here and to `redirect_to`;
    `/drip.wasm` sends a byte at a time for DRIP_SECONDS, then hangs up."""

    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    """(path, Authorization header) of every request."""
    redirect_to: str = ""

    def url(self, path: str, login: bool = True) -> str:
        userinfo = f"{USER}:{urllib.parse.quote(PASSWORD, safe='')}@" if login else ""
        return f"http://{userinfo}127.0.0.1:{self.port}{path}?access_token={TOKEN}"

    def authorization(self, path: str) -> list[str]:
        return [header for seen_path, header in self.seen if seen_path == path]


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """The origin a url names, and another host it redirects to."""
    states = (Server(), Server())
    running = [_serve(state) for state in states]
    states[0].redirect_to = f"http://127.0.0.1:{states[1].port}/plugin.wasm"
    yield states
    for server in running:
        server.shutdown()


def _serve(state: Server) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            authorization = self.headers.get("Authorization", "")
            state.seen.append((path, authorization))
            if path == "/drip.wasm":
                return self._drip()
            redirects = {"/same-host.wasm": "/private.wasm", "/elsewhere.wasm": state.redirect_to}
            if path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/private.wasm" and authorization != BASIC:
                self._answer(401, b"", {"WWW-Authenticate": 'Basic realm="modules"'})
            elif path in ("/plugin.wasm", "/private.wasm"):
                self._answer(200, MODULE)
            else:
                self._answer(500 if path == "/broken.wasm" else 404, b"")

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drip(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(MODULE)))
            self.end_headers()
            until = time.monotonic() + DRIP_SECONDS
            for byte in MODULE:
                if time.monotonic() > until:
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def resolve(url: str, tmp_path: Path, settings: FetchSettings = FetchSettings(retries=0)) -> ModuleStatus:
    return asyncio.run(resolve_module(ModuleKey(url, ""), ModuleStore(tmp_path / "store"), settings))


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:pw@host:8443/a/plugin.wasm?access_token=t#f", "https://host:8443/a/plugin.wasm"),
        ("http://token@host/plugin.wasm", "http://host/plugin.wasm"),
        ("oci://ghcr.io/acme/filter:1.0", "oci://ghcr.io/acme/filter:1.0"),
        ("ghcr.io/acme/filter@sha256:" + "a" * 64, "ghcr.io/acme/filter@sha256:" + "a" * 64),
        ("file:///srv/plugins/x.wasm", "file:///srv/plugins/x.wasm"),
    ],
)
def test_redact_drops_userinfo_query_and_fragment_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_login_in_the_url_is_basic_auth_for_that_host(servers: tuple[Server, Server], tmp_path: Path) -> None:
    origin, _ = servers
    assert resolve(origin.url("/private.wasm"), tmp_path) == READY
    assert origin.authorization("/private.wasm") == [BASIC]
    refused = resolve(origin.url("/private.wasm", login=False), tmp_path)
    assert isinstance(refused, ModuleFailed) and "HTTP 401" in refused.reason


def test_the_login_follows_a_redirect_on_its_host_and_no_other(servers: tuple[Server, Server], tmp_path: Path) -> None:
    origin, elsewhere = servers
    assert resolve(origin.url("/same-host.wasm"), tmp_path) == READY
    assert origin.authorization("/private.wasm") == [BASIC]
    assert resolve(origin.url("/elsewhere.wasm"), tmp_path) == READY
    assert origin.authorization("/elsewhere.wasm") == [BASIC]
    assert elsewhere.authorization("/plugin.wasm") == [""]


def test_a_failing_url_with_credentials_is_logged_and_reported_redacted(
    servers: tuple[Server, Server], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin, _ = servers
    url = origin.url("/broken.wasm")
    caplog.set_level(logging.DEBUG, "controlplane")
    settings = ResolverSettings(fetch=FetchSettings(retries=1, first_backoff_seconds=0.01))
    resolver = ModuleResolver(ModuleStore(tmp_path), ModuleIndex(tmp_path), settings, lambda: None)

    async def scenario() -> ModuleStatus:
        resolver.require([ModuleRequest(ModuleKey(url, ""), False, "r")])
        await resolver.settled()
        return resolver.statuses[ModuleKey(url, "")]

    status = asyncio.run(scenario())
    assert isinstance(status, ModuleFailed) and "HTTP 500" in status.reason
    assert f"127.0.0.1:{origin.port}/broken.wasm" in caplog.text, "the failure is logged, with its url"
    assert_no_secret(caplog.text + status.reason)


def test_a_download_that_drips_stops_at_its_deadline(servers: tuple[Server, Server], tmp_path: Path) -> None:
    origin, _ = servers
    settings = FetchSettings(retries=0, timeout_seconds=DRIP_SECONDS, download_seconds=1.0)
    status = resolve(origin.url("/drip.wasm", login=False), tmp_path, settings)
    assert isinstance(status, ModuleFailed) and "download deadline" in status.reason, status


class _Recording:
    """Notes the thread each blocking call of the store and the index runs in."""

    threads: set[int] = set()

    @classmethod
    def note(cls) -> None:
        cls.threads.add(threading.get_ident())


class RecordingStore(ModuleStore):
    def put(self, content: bytes) -> str:
        _Recording.note()
        return super().put(content)

    def intact(self, sha256: str) -> bool:
        _Recording.note()
        return super().intact(sha256)


class RecordingIndex(ModuleIndex):
    def record(self, key: ModuleKey, sha256: str, size: int, now: float, manifest: str = "") -> None:
        _Recording.note()
        super().record(key, sha256, size, now, manifest)


def test_hashing_and_writing_modules_and_the_index_stay_off_the_event_loop(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    origin, _ = servers
    request = ModuleRequest(ModuleKey(origin.url("/plugin.wasm", login=False), ""), False, "r")

    async def fetch_then_restart() -> tuple[int, list[ModuleStatus]]:
        statuses = []
        for _ in range(2):  # the second resolver finds the module in the cache and checks its hash
            resolver = ModuleResolver(
                RecordingStore(tmp_path), RecordingIndex(tmp_path), ResolverSettings(), lambda: None
            )
            resolver.require([request])
            await resolver.settled()
            statuses.append(resolver.statuses[request.key])
        return threading.get_ident(), statuses

    _Recording.threads = set()
    loop_thread, statuses = asyncio.run(fetch_then_restart())
    assert statuses == [READY, READY]
    assert _Recording.threads and loop_thread not in _Recording.threads
