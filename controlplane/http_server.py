"""The control plane's HTTP port: modules for the proxies, health and status for people.

Modules are immutable files named by their sha256, so handler threads read them without any lock; the
status views are computed on the event loop, which owns the state they show."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controlplane.modules.store import ModuleStore

log = logging.getLogger(__name__)

_MODULE_PATH = re.compile(r"^/modules/([a-f0-9]{64})\.wasm$")
StatusView = Callable[[], Any]


class _SharedPortServer(ThreadingHTTPServer):
    allow_reuse_port = True
    """Workers of `serve --workers N` bind the same port; the kernel spreads the connections."""


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        store: ModuleStore,
        loop: asyncio.AbstractEventLoop,
        is_ready: Callable[[], bool],
        views: dict[str, StatusView],
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http %s", format % args)

        self._store = store
        self._loop = loop
        self._is_ready = is_ready
        self._views = views
        self._httpd = _SharedPortServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        module = _MODULE_PATH.match(path)
        if module:
            self._send_module(request, module.group(1))
        elif path == "/healthz":
            _send(request, HTTPStatus.OK, b"ok\n", "text/plain")
        elif path == "/ready":
            ready = self._is_ready()
            _send(
                request,
                HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                b"ready\n" if ready else b"loading\n",
                "text/plain",
            )
        elif path in self._views:
            view = self._views[path]
            result = asyncio.run_coroutine_threadsafe(_call(view), self._loop).result(timeout=10)
            if isinstance(result, str):
                _send(request, HTTPStatus.OK, result.encode(), "text/plain; version=0.0.4")
            else:
                body = json.dumps(result, indent=2, sort_keys=True).encode() + b"\n"
                _send(request, HTTPStatus.OK, body, "application/json")
        else:
            _send(request, HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _send_module(self, request: BaseHTTPRequestHandler, sha256: str) -> None:
        try:
            handle = open(self._store.path(sha256), "rb")
        except FileNotFoundError:
            _send(request, HTTPStatus.NOT_FOUND, b"no such module\n", "text/plain")
            return
        with handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            request.send_response(HTTPStatus.OK)
            request.send_header("Content-Type", "application/wasm")
            request.send_header("Content-Length", str(size))
            request.send_header("Cache-Control", "public, max-age=31536000, immutable")
            request.end_headers()
            shutil.copyfileobj(handle, request.wfile)


async def _call(view: StatusView) -> Any:
    return view()


def _send(request: BaseHTTPRequestHandler, status: HTTPStatus, body: bytes, content_type: str) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
