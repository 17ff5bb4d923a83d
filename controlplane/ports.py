"""The server's three ports: xDS (gRPC, TLS and mTLS when given), modules and admin (HTTP on the event
loop). Opened before the directory is read, so that a port already taken fails the start at once."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.addresses import host_for_url
from controlplane.admin import AdminRoutes
from controlplane.http_server import Handler, HttpServer
from controlplane.serve_settings import ServeSettings
from controlplane.tls import ServerTls
from controlplane.xds.server import SERVER_OPTIONS, DiscoveryServer


class Ports:
    def __init__(
        self,
        settings: ServeSettings,
        tls: ServerTls | None,
        xds: DiscoveryServer[Any],
        module_routes: Handler,
        admin_routes: AdminRoutes,
    ) -> None:
        self._tls = tls
        self._grpc = grpc.aio.server(options=SERVER_OPTIONS)
        xds.register(self._grpc)
        address = f"{host_for_url(settings.host)}:{settings.xds_port}"
        if tls is not None:
            self.xds_port: int = self._grpc.add_secure_port(address, tls.grpc_credentials())
        else:
            self.xds_port = self._grpc.add_insecure_port(address)
        limits = settings.http_limits
        self._module = HttpServer("module", settings.host, settings.http_port, module_routes, limits, tls)
        self._admin = HttpServer("admin", settings.admin_host, settings.admin_port, admin_routes, limits)
        self._admin_routes = admin_routes
        self._hosts = (settings.host, settings.admin_host)

    async def start(self) -> None:
        await self._module.start()
        await self._admin.start()
        await self._grpc.start()
        self.http_port, self.admin_port = self._module.port, self._admin.port

    def describe(self) -> str:
        host, admin_host = self._hosts
        secured = (" with mTLS" if self._tls.mutual else " with TLS") if self._tls else ""
        return (
            f"xDS on {host}:{self.xds_port}{secured}, modules on {host}:{self.http_port}, "
            f"admin on {admin_host}:{self.admin_port}"
        )

    async def stop(self) -> None:
        """Stops accepting, then closes the streams: each Envoy keeps its config and reconnects at once (to
        another replica where there is one)."""
        await self._grpc.stop(grace=1)
        await self._module.stop()
        await self._admin.stop()
        self._admin_routes.close()
