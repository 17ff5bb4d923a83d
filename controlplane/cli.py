"""The `controlplane` command: serve, validate, diff, render, bootstrap, status."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import importlib.metadata
import json
import logging
import os
import resource
import sys
import tempfile
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from controlplane import logs
from controlplane.addresses import InvalidAddress, parse_host_port
from controlplane.app import serve
from controlplane.bootstrap import EnvoyTls, envoy_bootstrap
from controlplane.demo import run_demo
from controlplane.diff import compare_in_checkout, diff_configs, render_json, render_text
from controlplane.docker_config import DockerConfigError
from controlplane.model import ModuleFailed, ModuleKey, ModuleStatus, ProxyClass, labels_from
from controlplane.modules.credentials import CredentialHelpers, docker_config_path, load_docker_config
from controlplane.modules.download import FetchSettings
from controlplane.modules.fetch import oversized_local_modules
from controlplane.modules.keyless import Identity, InvalidTrustRoot, check_trust_root
from controlplane.modules.policy import ModuleRequest, module_requests
from controlplane.modules.resolver import ResolverSettings, resolve_module
from controlplane.modules.signatures import SignaturePolicy, load_key_files
from controlplane.modules.store import ModuleStore
from controlplane.node import ROUTER_PREFIX, is_gateway
from controlplane.processes import controlplane_command
from controlplane.proxy_status import any_nacked, status_table
from controlplane.redaction import redact
from controlplane.render import message_as_dict, resources_as_dict, to_yaml
from controlplane.serve_settings import ServeSettings
from controlplane.source.directory import load_directory, missing_roots
from controlplane.tls import ServerTls, TlsFileError, TlsFiles
from controlplane.translate.attachment import attachment_report, unattachable_plugins
from controlplane.translate.resources import TranslateSettings, translate
from controlplane.verification_keys import InvalidKey
from controlplane.workers import run_workers

DEFAULT_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wasm-controlplane")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logs.configure(args.log_level, args.log_format)
    return int(args.run(args) or 0)


def _version() -> str:
    try:
        return importlib.metadata.version("wasm-controlplane")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _log_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Before or after the subcommand; given after it, they win."""
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info" if defaults else argparse.SUPPRESS,
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text" if defaults else argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description="GitOps control plane for Envoy Wasm plugins")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _log_flags(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _log_flags(common, defaults=False)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, parents=[common])

    serve_cmd = command("serve", "serve xDS for the plugins of a config directory")
    serve_cmd.add_argument("--config-dir", action="append", required=True, help="repeatable")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve_cmd.add_argument("--xds-port", type=int, default=18000)
    serve_cmd.add_argument("--http-port", type=int, default=18001, help="cached modules, by sha256")
    serve_cmd.add_argument("--admin-port", type=int, default=18002, help="health, readiness, metrics, status views")
    serve_cmd.add_argument("--admin-host", default="127.0.0.1", help="address of --admin-port (default: loopback)")
    serve_cmd.add_argument("--tls-cert", help="PEM certificate (chain) of the xDS and module ports; re-read on change")
    serve_cmd.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve_cmd.add_argument(
        "--client-ca", help="PEM CA that proxies' certificates must be signed by (mTLS; needs --tls-cert)"
    )
    serve_cmd.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="with --client-ca, proxies' SPIFFE ids are spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT",
    )
    serve_cmd.add_argument(
        "--advertise-address",
        help="ignored: proxies no longer download modules from --http-port (they come inside the configs)",
    )
    serve_cmd.add_argument("--root-namespace", default="istio-system")
    serve_cmd.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    serve_cmd.add_argument(
        "--module-delivery",
        choices=["inline", "local"],
        default="inline",
        help="inline: each module travels inside its plugin's config; local: proxies read "
        "them from --local-module-dir, a shared volume holding the cache dir",
    )
    serve_cmd.add_argument("--local-module-dir", help="where the proxies see --cache-dir (default: the same path)")
    _module_flags(serve_cmd)
    serve_cmd.add_argument(
        "--repull-interval",
        type=float,
        default=ResolverSettings.repull_seconds,
        help="seconds between pulls of modules with imagePullPolicy Always (0: only on change)",
    )
    serve_cmd.add_argument("--resync-interval", type=float, default=30.0, help="seconds between full rescans")
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the ports (SO_REUSEPORT), each loading the directory: one per core",
    )
    serve_cmd.set_defaults(run=_serve)

    validate_cmd = command("validate", "check config directories; exit 1 when invalid")
    validate_cmd.add_argument("dirs", nargs="+")
    validate_cmd.add_argument("--format", choices=["text", "json"], default="text")
    validate_cmd.add_argument(
        "--max-module-size", type=int, default=FetchSettings.max_bytes, help="bytes; checked for file:// modules"
    )
    validate_cmd.add_argument("--root-namespace", default="istio-system")
    validate_cmd.set_defaults(run=_validate)

    diff_cmd = command("diff", "per proxy class, the plugins and filter orders that change")
    diff_cmd.add_argument("old_dir")
    diff_cmd.add_argument("new_dir")
    diff_cmd.add_argument("--format", choices=["text", "json"], default="text")
    diff_cmd.add_argument("--root-namespace", default="istio-system")
    diff_cmd.set_defaults(run=_diff)

    render_cmd = command("render", "print the resources one proxy would get")
    render_cmd.add_argument("dir")
    render_cmd.add_argument("--namespace", default="default")
    render_cmd.add_argument("--labels", default="", type=_labels, help="k=v[,k=v]")
    render_cmd.add_argument("--gateway", action="store_true", help="a gateway: every listener is CLIENT-side")
    render_cmd.add_argument("--root-namespace", default="istio-system")
    _module_flags(render_cmd)
    render_cmd.set_defaults(run=_render)

    bootstrap_cmd = command("bootstrap", "print an Envoy bootstrap for one proxy")
    bootstrap_cmd.add_argument("--node-id", required=True)
    bootstrap_cmd.add_argument("--namespace", default="default")
    bootstrap_cmd.add_argument("--labels", default="", type=_labels, help="k=v[,k=v]")
    bootstrap_cmd.add_argument(
        "--gateway", action="store_true", help="a gateway: the node id is given Istio's router~ prefix"
    )
    bootstrap_cmd.add_argument(
        "--xds-address",
        action="append",
        type=_host_port,
        help="HOST:PORT of the control plane (default: 127.0.0.1:18000); repeat it for several replicas",
    )
    bootstrap_cmd.add_argument("--admin-port", type=int, default=9901)
    bootstrap_cmd.add_argument("--delta", action="store_true", help="incremental xDS instead of state of the world")
    bootstrap_cmd.add_argument("--tls-ca", help="PEM CA the control plane's certificate is checked against (TLS)")
    bootstrap_cmd.add_argument("--tls-cert", help="PEM client certificate of the proxy, for mTLS")
    bootstrap_cmd.add_argument("--tls-key", help="PEM private key of --tls-cert")
    bootstrap_cmd.set_defaults(run=_bootstrap)

    status_cmd = command("status", "per proxy and type: SYNCED, STALE, NACKED or NOT SENT; exit 1 on a NACK")
    status_cmd.add_argument("--admin-address", default="127.0.0.1:18002", type=_host_port, help="HOST:PORT")
    status_cmd.add_argument("--output", choices=["table", "json"], default="table")
    status_cmd.set_defaults(run=_status)

    demo_cmd = command("demo", "run the rate-limit tutorial with httpbin and Envoy on this machine")
    demo_cmd.set_defaults(run=lambda args: run_demo())
    return parser


def _module_flags(command: argparse.ArgumentParser) -> None:
    """How modules are fetched: the same for `serve` and `render`, so that both see the same modules."""
    command.add_argument("--max-module-size", type=int, default=FetchSettings.max_bytes, help="bytes")
    command.add_argument(
        "--docker-config", help="Docker config.json (or its folder) with registry logins (default: $DOCKER_CONFIG)"
    )
    command.add_argument("--registry-ca", help="PEM file of CAs to trust for registries, besides the system's")
    command.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry reached over plain HTTP; repeatable",
    )
    command.add_argument(
        "--verification-key",
        action="append",
        default=[],
        metavar="FILE",
        help="a PEM public key (cosign.pub) that --require-signatures checks modules with; repeatable",
    )
    command.add_argument(
        "--require-signatures", action="store_true", help="every module must be signed by a --verification-key"
    )
    command.add_argument(
        "--require-signatures-in",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="the modules of this namespace's plugins must be signed by a --verification-key; repeatable",
    )
    command.add_argument(
        "--sigstore-trust-root",
        metavar="FILE",
        help="Sigstore trusted_root.json: keyless signatures by --certificate-identity are accepted too",
    )
    command.add_argument("--certificate-identity", metavar="SUBJECT", help="the keyless signer's identity (SAN)")
    command.add_argument("--certificate-oidc-issuer", metavar="ISSUER", help="the keyless signer's OIDC issuer")


class _UsageError(Exception):
    """A flag that cannot be used; exit 2."""


def _fetch_settings(args: argparse.Namespace) -> FetchSettings:
    """The settings `_module_flags` give, or a _UsageError."""
    docker_config = docker_config_path(args.docker_config, os.environ)
    try:
        docker_credentials, helpers = load_docker_config(docker_config) if docker_config else ((), CredentialHelpers())
    except DockerConfigError as exc:
        raise _UsageError(f"--docker-config: {exc}") from None
    if args.registry_ca and not os.path.isfile(args.registry_ca):
        raise _UsageError(f"--registry-ca: no such file: {args.registry_ca}")
    return FetchSettings(
        max_bytes=args.max_module_size,
        registry_ca=args.registry_ca or "",
        insecure_registries=frozenset(args.insecure_registry),
        docker_credentials=docker_credentials,
        credential_helpers=helpers,
    )


def _signature_policy(args: argparse.Namespace) -> SignaturePolicy:
    """The policy `_module_flags` give, or a _UsageError."""
    try:
        keys = load_key_files(args.verification_key)
    except InvalidKey as exc:
        raise _UsageError(f"--verification-key: {exc}") from None
    identity = _keyless_identity(args)
    required = args.require_signatures or bool(args.require_signatures_in)
    if (keys or identity) and not required:
        raise _UsageError(
            "--verification-key and keyless identities need --require-signatures or --require-signatures-in NAMESPACE"
        )
    if required and not (keys or identity):
        raise _UsageError(
            "--require-signatures needs at least one --verification-key FILE (or a keyless identity) to check with"
        )
    return SignaturePolicy(keys, args.require_signatures, frozenset(args.require_signatures_in), identity)


def _keyless_identity(args: argparse.Namespace) -> Identity | None:
    given = (args.sigstore_trust_root, args.certificate_identity, args.certificate_oidc_issuer)
    if not any(given):
        return None
    if not all(given):
        raise _UsageError("--sigstore-trust-root, --certificate-identity and --certificate-oidc-issuer go together")
    try:
        trust_root = Path(args.sigstore_trust_root).read_text()
        check_trust_root(trust_root)
    except (OSError, UnicodeDecodeError, InvalidTrustRoot) as exc:
        raise _UsageError(f"--sigstore-trust-root: {args.sigstore_trust_root}: {exc}") from None
    return Identity(args.certificate_oidc_issuer, args.certificate_identity, trust_root)


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in filter(None, text.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{pair!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except InvalidAddress:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT") from None


def _serve(args: argparse.Namespace) -> int:
    cache_dir = os.path.abspath(args.cache_dir)
    if args.advertise_address:
        print("controlplane: --advertise-address is ignored: modules come inside the configs", file=sys.stderr)
    try:
        fetch = _fetch_settings(args)
        signatures = _signature_policy(args)
    except _UsageError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    missing = missing_roots(args.config_dir)
    if missing:
        # Started on a typo, the server would serve an empty config and look healthy.
        print(f"controlplane: --config-dir: no such folder or file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.host in ("0.0.0.0", "::") and not args.advertise_address:
        print("controlplane: --advertise-address is required with --host", args.host, file=sys.stderr)
        return 2
    try:
        tls = _tls_files(args)
        if tls is not None:
            ServerTls(tls)  # refuse to start on files that do not load, rather than at the first handshake
    except (_UsageError, TlsFileError) as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        config_dirs=tuple(args.config_dir),
        cache_dir=cache_dir,
        host=args.host,
        xds_port=args.xds_port,
        http_port=args.http_port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        tls=tls,
        trust_domain=args.trust_domain,
        translate=TranslateSettings(
            root_namespace=args.root_namespace,
            module_delivery=args.module_delivery,
            local_module_dir=args.local_module_dir or cache_dir,
        ),
        modules=ResolverSettings(fetch=fetch, repull_seconds=args.repull_interval),
        signatures=signatures,
        resync_seconds=args.resync_interval,
    )
    _raise_open_files_limit()
    if args.workers > 1:
        return run_workers(args.workers, _worker_command(args.argv))
    _run_until_stopped(serve(settings))
    return 0


def _worker_command(argv: list[str]) -> list[str]:
    """This command line for one worker: the same flags with `--workers 1`."""
    command: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            command.append(arg)
    return controlplane_command(*command, "--workers", "1")


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise _UsageError("--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        raise _UsageError("--client-ca needs --tls-cert and --tls-key")
    if not args.tls_cert:
        return None
    return TlsFiles(args.tls_cert, args.tls_key, args.client_ca or "")


def _raise_open_files_limit() -> None:
    """Every proxy stream and HTTP connection is a descriptor: take what the hard limit allows, as Go
    servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass


def _run_until_stopped(server: Coroutine[Any, Any, None]) -> None:
    """Runs the server until it returns (on SIGTERM or SIGINT). Unlike asyncio.run, does not wait for the
    worker threads: one may be in a download (up to minutes) or a read that blocks, and a stop must take
    seconds. Whatever a worker was doing is abandoned with the process."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(server)
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.wait(leftover, timeout=2))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()  # does not wait for the default executor's threads
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        logging.getLogger(__name__).debug("leaving work in progress in worker threads")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _validate(args: argparse.Namespace) -> int:
    missing = [d for d in args.dirs if not os.path.exists(d)]
    if missing:
        print(f"controlplane: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    loaded = load_directory(args.dirs)
    errors = sorted(loaded.errors + tuple(oversized_local_modules(loaded.config.plugins, args.max_module_size)))
    warnings = sorted(set(loaded.warnings) | set(unattachable_plugins(loaded.config, args.root_namespace)))
    for warning in warnings:  # worth a look, not a reason to fail a commit
        print(f"warning: {warning}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([dataclasses.asdict(e) for e in errors], indent=2))
        return 1 if errors else 0
    for error in errors:
        print(error, file=sys.stderr)
    plugins, sidecars = len(loaded.config.plugins), len(loaded.config.sidecars)
    if errors:
        return 1
    print(f"ok: {plugins} WasmPlugin(s), {sidecars} Sidecar(s) in {len(loaded.files)} file(s)")
    return 0


def _diff(args: argparse.Namespace) -> int:
    """Exit 0: no proxy class changes; 1: some do; 2: a directory is missing (as diff(1))."""
    missing = [d for d in (args.old_dir, args.new_dir) if not os.path.isdir(d)]
    if missing:
        print(f"controlplane: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    old, new = load_directory([args.old_dir]), load_directory([args.new_dir])
    for error in old.errors + new.errors:
        print(f"warning: not served: {error}", file=sys.stderr)
    diffs = diff_configs(
        old.config,
        new.config,
        args.root_namespace,
        compare_in_checkout(args.old_dir),
        compare_in_checkout(args.new_dir),
    )
    print(json.dumps(render_json(diffs), indent=2) + "\n" if args.format == "json" else render_text(diffs), end="")
    return 1 if diffs else 0


def _render(args: argparse.Namespace) -> int:
    try:
        fetch = _fetch_settings(args)
        signatures = _signature_policy(args)
    except _UsageError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    loaded = load_directory([args.dir])
    for error in loaded.errors:
        print(error, file=sys.stderr)
    config = signatures.apply(loaded.config)
    settings = TranslateSettings(root_namespace=args.root_namespace)
    proxy = ProxyClass(args.namespace, labels_from(args.labels), gateway=args.gateway or is_gateway("", args.labels))
    with tempfile.TemporaryDirectory() as scratch:
        store = ModuleStore(Path(scratch))
        modules = asyncio.run(_resolve_modules(module_requests(config), fetch, store))
        for key, status in modules.items():
            if isinstance(status, ModuleFailed):  # its plugins get their stand-ins below; say why
                print(f"module {redact(key.url)}: {status.reason}", file=sys.stderr)
        rendered = resources_as_dict(translate(config, proxy, modules, settings, code=store.read))
    rendered["attachment"] = attachment_report(config, [proxy], args.root_namespace)
    print(to_yaml(rendered), end="")
    return 1 if loaded.errors else 0


async def _resolve_modules(
    requests: list[ModuleRequest], fetch: FetchSettings, store: ModuleStore
) -> dict[ModuleKey, ModuleStatus]:
    """Modules as the server would see them (its flags, the plugins' pull Secrets)."""
    results = await asyncio.gather(*(resolve_module(r.key, store, fetch, r.credentials) for r in requests))
    return {r.key: status for r, status in zip(requests, results, strict=True)}


def _bootstrap(args: argparse.Namespace) -> int:
    (host, port), *others = args.xds_address or [("127.0.0.1", 18000)]
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_cert and not args.tls_ca):
        print("controlplane: --tls-cert and --tls-key go together, and need --tls-ca", file=sys.stderr)
        return 2
    tls = EnvoyTls(args.tls_ca, args.tls_cert or "", args.tls_key or "") if args.tls_ca else None
    node_id = (
        ROUTER_PREFIX + args.node_id if args.gateway and not args.node_id.startswith(ROUTER_PREFIX) else args.node_id
    )
    bootstrap = envoy_bootstrap(
        node_id,
        args.namespace,
        args.labels,
        host,
        port,
        args.admin_port,
        delta=args.delta,
        tls=tls,
        other_xds_addresses=others,
    )
    print(to_yaml(message_as_dict(bootstrap)), end="")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Exit 0: every proxy holds what it was sent or is being sent it; 1: some proxy NACKed; 2: the admin
    port cannot be asked."""
    host, port = args.admin_address
    try:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", "/debug/proxies")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        proxies = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        print(f"controlplane: cannot read {host}:{port}/debug/proxies: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(proxies, indent=2, sort_keys=True))
    else:
        print(status_table(proxies), end="")
    return 1 if any_nacked(proxies) else 0


if __name__ == "__main__":
    sys.exit(main())
