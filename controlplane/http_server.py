"""A small HTTP/1.1 server on the event loop, for the control plane's two HTTP ports: modules for the
proxies, and the admin port (health, readiness, metrics, status views) for people.

No thread per connection: an idle or slow client costs a socket and a few objects, never a thread. Each
port caps its connections; at the cap, the connection idle the longest makes room for the new one, so a
flood of idle sockets cannot lock a probe out. Request heads are capped in size and must arrive within
`request_seconds`; a kept-alive connection with no request for `idle_seconds` is closed. GET and HEAD
only, and no request bodies: nothing served here takes input beyond its path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from controlplane.modules.store import ModuleStore
from controlplane.tls import ServerTls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 512
    max_header_bytes: int = 16 * 1024
    request_seconds: float = 10.0
    """From the first byte of a request (or the TLS handshake) to the end of its head."""
    idle_seconds: float = 60.0
    """A connection waiting for its next request."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Without the query."""
    peer_uris: tuple[str, ...] = ()
    """The URI SANs of the client's certificate, when it sent one over TLS (SPIFFE ids)."""


@dataclass(frozen=True)
class Reply:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FileReply:
    """A file sent from disk, never read whole into memory."""

    path: Path
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Reply | FileReply]]


def text(status: HTTPStatus, body: str) -> Reply:
    return Reply(status, body.encode())


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    idle_since: float | None = field(default_factory=time.monotonic)
    """When it started waiting for a request; None while one is being read or answered."""


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpServer:
    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        handler: Handler,
        limits: HttpLimits = HttpLimits(),
        tls: ServerTls | None = None,
    ) -> None:
        """`name` says which port this is in log lines."""
        self._name = name
        self._host = host
        self._requested_port = port
        self._handler = handler
        self._limits = limits
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._connections: dict[_Connection, asyncio.Task[None]] = {}
        self.port = port

    async def start(self) -> None:
        # The TLS handshake is done per connection rather than by the listening socket, so that each new
        # connection takes the certificate files as they are now (rotated ones included).
        # Workers of `serve --workers N` bind the same port; the kernel spreads the connections.
        self._server = await asyncio.start_server(
            self._serve, self._host, self._requested_port, limit=self._limits.max_header_bytes, reuse_port=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stops accepting and closes every connection, mid-download ones included."""
        if self._server is not None:
            self._server.close()
        for connection, task in list(self._connections.items()):
            connection.writer.transport.abort()
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections.values()), timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self._limits.max_connections and not self._evict_idle():
            log.warning("%s port: %d connections open; refusing one", self._name, len(self._connections))
            writer.transport.abort()
            return
        self._connections[connection] = task
        try:
            if self._tls is not None:
                await writer.start_tls(self._tls.ssl_context(), ssl_handshake_timeout=self._limits.request_seconds)
            peer_uris = _peer_uris(writer)
            keep_alive = True
            while keep_alive:
                connection.idle_since = time.monotonic()
                try:
                    first = await asyncio.wait_for(reader.read(1), self._limits.idle_seconds)
                except TimeoutError:
                    return
                if not first:
                    return
                connection.idle_since = None
                keep_alive = await self._answer(first, reader, writer, peer_uris)
        except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
            # A client that goes away (or never finishes a handshake) is its own business.
            log.debug("%s port: connection ended: %r", self._name, exc)
        except asyncio.CancelledError:
            pass  # the server is stopping: this task is ours, and asyncio would log its cancellation
        finally:
            self._connections.pop(connection, None)
            writer.close()

    def _evict_idle(self) -> bool:
        """Closes the connection idle the longest, if one is idle; True if one was."""
        idle = [c for c in self._connections if c.idle_since is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since or 0.0)
        oldest.writer.transport.abort()
        self._connections.pop(oldest, None)
        return True

    async def _answer(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_uris: tuple[str, ...]
    ) -> bool:
        """Reads one request and answers it; True to keep the connection for the next."""
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._limits.request_seconds)
        except (asyncio.LimitOverrunError, ValueError):
            await _write_reply(
                writer, "GET", text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header too large\n"), False
            )
            return False
        try:
            method, path, keep_alive = _parse_head(head)
        except _BadRequest as exc:
            await _write_reply(writer, "GET", text(exc.status, f"{exc}\n"), False)
            return False
        try:
            reply = await self._handler(Request(method, path, peer_uris))
        except Exception:
            log.exception("%s port: %s %s failed", self._name, method, path)
            reply = text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        if isinstance(reply, FileReply):
            return await _write_file(writer, method, reply, keep_alive)
        await _write_reply(writer, method, reply, keep_alive)
        return keep_alive


def _parse_head(head: bytes) -> tuple[str, str, bool]:
    """Method, path and whether the client keeps the connection, from a request head."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.0 or HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header")
        headers[name.lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        raise _BadRequest(HTTPStatus.METHOD_NOT_ALLOWED, "GET or HEAD only")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "no request body expected")
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return method, target.split("?", 1)[0], keep_alive


def _head(
    status: HTTPStatus, content_type: str, length: int, headers: tuple[tuple[str, str], ...], keep: bool
) -> bytes:
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        f"Connection: {'keep-alive' if keep else 'close'}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write_reply(writer: asyncio.StreamWriter, method: str, reply: Reply, keep_alive: bool) -> None:
    writer.write(_head(reply.status, reply.content_type, len(reply.body), reply.headers, keep_alive))
    if method != "HEAD":
        writer.write(reply.body)
    await writer.drain()


async def _write_file(writer: asyncio.StreamWriter, method: str, reply: FileReply, keep_alive: bool) -> bool:
    try:
        handle = open(reply.path, "rb")
    except FileNotFoundError:
        await _write_reply(writer, method, text(HTTPStatus.NOT_FOUND, "not found\n"), keep_alive)
        return keep_alive
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            await _write_reply(writer, method, text(HTTPStatus.NOT_FOUND, "not found\n"), keep_alive)
            return keep_alive
        writer.write(_head(HTTPStatus.OK, reply.content_type, info.st_size, reply.headers, keep_alive))
        if method == "HEAD":
            await writer.drain()
            return keep_alive
        await writer.drain()
        # The kernel copies the file where it can (plain TCP); over TLS, asyncio reads it in chunks.
        await asyncio.get_running_loop().sendfile(writer.transport, handle)
    return keep_alive


def _peer_uris(writer: asyncio.StreamWriter) -> tuple[str, ...]:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return ()
    certificate = ssl_object.getpeercert()
    if not certificate:
        return ()
    return tuple(value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI")


_MODULE_PATH = re.compile(r"^/modules/([a-f0-9]{64})\.wasm$")


def module_routes(store: ModuleStore, may_fetch: Callable[[str, Request], bool]) -> Handler:
    """The module port: `/modules/<sha256>.wasm` and nothing else. `may_fetch(sha256, request)` says whether
    this client may have that module (with mTLS: a proxy of a namespace some plugin using it applies to)."""

    async def route(request: Request) -> Reply | FileReply:
        module = _MODULE_PATH.match(request.path)
        if module is None:
            return text(HTTPStatus.NOT_FOUND, "not found\n")
        if not may_fetch(module.group(1), request):
            # Not 403: whether a module exists is itself not for this client to learn.
            return text(HTTPStatus.NOT_FOUND, "not found\n")
        return FileReply(
            store.path(module.group(1)),
            "application/wasm",
            (("Cache-Control", "public, max-age=31536000, immutable"),),
        )

    return route
