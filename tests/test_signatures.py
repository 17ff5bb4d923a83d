"""Signed modules, in-process against a real registry (Debian's docker-registry, distribution 2.8): cosign's
classic `.sig` layout and the OCI 1.1 Sigstore bundle (distribution 2.8 has no referrers API: the referrers
tag is what is found), detached `cosign sign-blob` signatures beside http(s) and file modules, the keys
cosign uses, every way a signature can be wrong, the server's policy and the cache across a restart."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import http.server
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.model import Config, ModuleFailed, ModuleKey, ModuleReady, ModuleStatus
from controlplane.modules.download import FetchSettings
from controlplane.modules.fetch import fetch_module
from controlplane.modules.index import ModuleIndex
from controlplane.modules.keyless import Identity
from controlplane.modules.policy import ModuleRequest, module_requests
from controlplane.modules.resolver import ModuleResolver, ResolverSettings, resolve_module
from controlplane.modules.signatures import SignaturePolicy, SignatureRejected, check_signatures, signature_url
from controlplane.modules.store import ModuleStore
from controlplane.processes import controlplane_command
from controlplane.source.directory import load_directory
from controlplane.verification_keys import canonical_pem
from tests.cosign import KeyPair, blob_bundle, bundle, push_bundle, sign_blob, sign_bundle, sign_classic
from tests.registry import OCI_INDEX, Registry
from tests.sigstore_instance import SigstoreInstance
from tests.support import ORDER_MARKER_WASM, RATELIMIT_WASM, wasm_plugin_yaml

MODULE = RATELIMIT_WASM.read_bytes()
READY = ModuleReady(hashlib.sha256(MODULE).hexdigest(), len(MODULE))
OTHER_MODULE = ORDER_MARKER_WASM.read_bytes()
KEY = KeyPair.create()
OTHER_KEY = KeyPair.create()
LAYOUTS = ("classic", "bundle")


def settings(registry: Registry) -> FetchSettings:
    return FetchSettings(insecure_registries=frozenset({registry.host}), retries=0)


def signed_key(url: str, *groups: tuple[KeyPair, ...]) -> ModuleKey:
    return ModuleKey(url, "", "", tuple(tuple(canonical_pem(k.public_pem) for k in group) for group in groups))


def resolve(registry: Registry, key: ModuleKey, tmp_path: Path) -> ModuleStatus:
    return asyncio.run(resolve_module(key, ModuleStore(tmp_path / "store"), settings(registry)))


def reason(status: ModuleStatus) -> str:
    assert isinstance(status, ModuleFailed), status
    return status.reason


def sign(layout: str, registry: Registry, repository: str, digest: str, key: KeyPair, **options: object) -> None:
    if layout == "classic":
        sign_classic(registry, repository, digest, key, **options)  # type: ignore[arg-type]
    else:
        sign_bundle(registry, repository, digest, key, **options)  # type: ignore[arg-type]


def test_distribution_2_8_has_no_referrers_api_so_the_referrers_tag_is_what_is_read(registry: Registry) -> None:
    digest = registry.push("probe/referrers", "1", MODULE)
    sign_bundle(registry, "probe/referrers", digest, KEY)
    status, _, _ = registry._request("GET", f"/v2/probe/referrers/referrers/{digest}")
    assert status == 404
    index = registry.manifest_or_none("probe/referrers", digest.replace(":", "-"))
    assert (
        index is not None and index["manifests"][0]["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    )


@contextmanager
def with_referrers_api(registry: Registry, indexes: dict[str, dict[str, Any]]) -> Iterator[str]:
    """A registry with the OCI 1.1 referrers API cannot run here (distribution 2.8 is what Debian has; zot
    and distribution 3 are not packaged), so this loopback proxy adds one in front of the real registry:
    `/v2/<name>/referrers/<digest>` answers the index the test gives, everything else is forwarded. Yields
    the proxy's `host:port`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if "/referrers/" in self.path:
                digest = self.path.split("?", 1)[0].rsplit("/", 1)[1]
                empty = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
                status, content_type, body = 200, OCI_INDEX, json.dumps(indexes.get(digest, empty)).encode()
            else:
                upstream = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=10)
                upstream.request("GET", self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
                response = upstream.getresponse()
                status, content_type, body = response.status, response.getheader("Content-Type", ""), response.read()
                upstream.close()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_registry_with_the_referrers_api_is_asked_there_and_not_under_the_tag(
    registry: Registry, tmp_path: Path
) -> None:
    digest = registry.push("api/p", "1.0", MODULE)
    sign_bundle(registry, "api/p", digest, KEY)
    tag = digest.replace(":", "-")
    index = registry.manifest_or_none("api/p", tag)
    assert index is not None

    def through_api(listed: dict[str, dict[str, Any]]) -> ModuleStatus:
        with with_referrers_api(registry, listed) as host:
            key = signed_key(f"oci://{host}/api/p:1.0", (KEY,))
            fetch = FetchSettings(insecure_registries=frozenset({host}), retries=0)
            return asyncio.run(resolve_module(key, ModuleStore(tmp_path / "store"), fetch))

    registry.delete_manifest("api/p", registry.descriptor("api/p", tag)["digest"])
    assert through_api({digest: index}) == READY, "listed by the API only"
    registry.push_manifest("api/p", tag, index)
    assert "no cosign signature" in reason(through_api({})), "the tag is a fallback for registries without the API"


@pytest.mark.parametrize("kind", ["ecdsa", "rsa", "ed25519"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_module_signed_by_the_key_is_served(registry: Registry, tmp_path: Path, layout: str, kind: str) -> None:
    key = KeyPair.create(kind)
    repository = f"signed/{layout}-{kind}"
    digest = registry.push(repository, "1.0", MODULE)
    sign(layout, registry, repository, digest, key)
    assert resolve(registry, signed_key(f"oci://{registry.host}/{repository}:1.0", (key,)), tmp_path) == READY


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_wrong_signature_is_refused_and_says_which_check_failed(
    registry: Registry, tmp_path: Path, layout: str
) -> None:
    def outcome(repository: str, *, signer: KeyPair | None = KEY, **options: object) -> str:
        digest = registry.push(f"wrong/{layout}/{repository}", "1.0", MODULE)
        if signer is not None:
            sign(layout, registry, f"wrong/{layout}/{repository}", digest, signer, **options)
        url = f"oci://{registry.host}/wrong/{layout}/{repository}:1.0"
        return reason(resolve(registry, signed_key(url, (KEY,)), tmp_path))

    unsigned = outcome("unsigned", signer=None)
    assert "no cosign signature for sha256:" in unsigned and ".sig" in unsigned
    assert "verifies with the key sha256:" in outcome("other-key", signer=OTHER_KEY)
    other_digest = "sha256:" + "ab" * 32
    named = "statement_digest" if layout == "bundle" else "payload_digest"
    mismatch = outcome("other-digest", **{named: other_digest})
    assert f"is for {other_digest}, not for the pulled sha256:" in mismatch
    assert "none of the 1 signature(s) found" in outcome("corrupt", corrupt=True)


def test_an_attestation_by_the_key_is_not_a_signature_of_the_module(registry: Registry, tmp_path: Path) -> None:
    digest = registry.push("attested/p", "1.0", MODULE)
    sign_bundle(registry, "attested/p", digest, KEY, predicate_type="https://slsa.dev/provenance/v1")
    failed = reason(resolve(registry, signed_key(f"oci://{registry.host}/attested/p:1.0", (KEY,)), tmp_path))
    assert "is for no image digest" in failed


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_tag_moved_after_signing_is_refused_and_the_signed_digest_still_serves(
    registry: Registry, tmp_path: Path, layout: str
) -> None:
    repository = f"moved/{layout}"
    signed = registry.push(repository, "stable", MODULE)
    sign(layout, registry, repository, signed, KEY)
    moved = registry.push(repository, "stable", OTHER_MODULE)
    failed = reason(resolve(registry, signed_key(f"oci://{registry.host}/{repository}:stable", (KEY,)), tmp_path))
    assert f"no cosign signature for {moved}" in failed
    pinned = signed_key(f"oci://{registry.host}/{repository}@{signed}", (KEY,))
    assert resolve(registry, pinned, tmp_path) == READY


def test_a_signature_copied_to_the_moved_tags_signature_tag_names_the_old_digest(
    registry: Registry, tmp_path: Path
) -> None:
    """Who can move a tag can also copy the old signature image under the new digest's `.sig` tag; the
    signed payload still names the digest it was made for."""
    signed = registry.push("copied/p", "stable", MODULE)
    tag = sign_classic(registry, "copied/p", signed, KEY)
    moved = registry.push("copied/p", "stable", OTHER_MODULE)
    signature_image = registry.manifest_or_none("copied/p", tag)
    assert signature_image is not None
    registry.push_manifest("copied/p", moved.replace(":", "-") + ".sig", signature_image)
    failed = reason(resolve(registry, signed_key(f"oci://{registry.host}/copied/p:stable", (KEY,)), tmp_path))
    assert f"is for {signed}, not for the pulled {moved}" in failed


@pytest.mark.parametrize("signed", ["index", "platform manifest"])
def test_an_image_index_may_be_signed_at_the_index_or_at_the_platform_manifest(
    registry: Registry, tmp_path: Path, signed: str
) -> None:
    repository = f"index/{signed.replace(' ', '-')}"
    index = registry.push(repository, "1.0", MODULE, "oci-index")
    platform = registry.push(repository, "1.0-amd64", MODULE, "oci-image")
    sign_classic(registry, repository, index if signed == "index" else platform, KEY)
    assert resolve(registry, signed_key(f"oci://{registry.host}/{repository}:1.0", (KEY,)), tmp_path) == READY


def test_the_plugins_key_and_the_servers_keys_must_each_have_signed(registry: Registry, tmp_path: Path) -> None:
    server_key = KeyPair.create("ed25519")
    digest = registry.push("both/p", "1.0", MODULE)
    url = f"oci://{registry.host}/both/p:1.0"
    sign_classic(registry, "both/p", digest, KEY)
    both = signed_key(url, (KEY,), (OTHER_KEY, server_key))
    assert " or the key sha256:" in reason(resolve(registry, both, tmp_path))
    sign_bundle(registry, "both/p", digest, server_key)
    assert resolve(registry, both, tmp_path) == READY


GITHUB = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/acme/filters/.github/workflows/release.yml@refs/tags/v1.0"


def test_keyless_signatures_need_the_trusted_roots_ca_and_log_and_the_required_identity(
    registry: Registry, tmp_path: Path
) -> None:
    sigstore, elsewhere = SigstoreInstance.create(), SigstoreInstance.create()
    identity = Identity(GITHUB, WORKFLOW, sigstore.trusted_root())
    url_of: dict[str, str] = {}

    def outcome(case: str, make: Callable[[str], bytes]) -> ModuleStatus:
        digest = registry.push(f"keyless/{case}", "1.0", MODULE)
        push_bundle(registry, f"keyless/{case}", digest, make(digest))
        url_of[case] = f"oci://{registry.host}/keyless/{case}:1.0"
        key = ModuleKey(url_of[case], "", "", ((identity.signer(),),))
        return resolve(registry, key, tmp_path)

    assert outcome("signed", lambda d: sigstore.keyless_bundle(d, WORKFLOW, GITHUB)) == READY
    other_workflow = WORKFLOW.replace("acme", "mallory")
    wrong_subject = reason(outcome("subject", lambda d: sigstore.keyless_bundle(d, other_workflow, GITHUB)))
    assert f"certificate identity {other_workflow} (issuer {GITHUB}) is not the required {WORKFLOW}" in wrong_subject
    wrong_issuer = reason(outcome("issuer", lambda d: sigstore.keyless_bundle(d, WORKFLOW, "https://accounts.test")))
    assert "(issuer https://accounts.test) is not the required" in wrong_issuer
    other_instance = reason(outcome("instance", lambda d: elsewhere.keyless_bundle(d, WORKFLOW, GITHUB)))
    assert "from a log the trusted root does not list" in other_instance
    tampered = reason(outcome("tampered", lambda d: sigstore.keyless_bundle(d, WORKFLOW, GITHUB, log_tampered=True)))
    assert "signed entry timestamp does not verify" in tampered
    server_cert = reason(outcome("eku", lambda d: sigstore.keyless_bundle(d, WORKFLOW, GITHUB, code_signing=False)))
    assert "not for code signing" in server_cert
    other_digest = "sha256:" + "cd" * 32
    for_other = reason(outcome("digest", lambda d: sigstore.keyless_bundle(other_digest, WORKFLOW, GITHUB)))
    assert f"is for {other_digest}, not for the pulled" in for_other

    # The classic layout, as keyless cosign 2 writes it: certificate and Rekor bundle annotations.
    def classic_keyless(case: str, subject: str) -> ModuleStatus:
        digest = registry.push(f"keyless/{case}", "1.0", MODULE)
        leaf_key, cert = sigstore.leaf(subject, GITHUB)
        keyless = sigstore.classic_annotations(cert)
        sign_classic(registry, f"keyless/{case}", digest, KeyPair(leaf_key), keyless=keyless)
        key = ModuleKey(f"oci://{registry.host}/keyless/{case}:1.0", "", "", ((identity.signer(),),))
        return resolve(registry, key, tmp_path)

    assert classic_keyless("classic", WORKFLOW) == READY
    # A file module with keyless cosign 3's `sign-blob --bundle` beside it.
    blob_key = ModuleKey(f"file://{tmp_path}/keyless.wasm", "", "", ((identity.signer(),),))
    (tmp_path / "keyless.wasm").write_bytes(MODULE)
    for subject, expected in [(other_workflow, "is not the required"), (WORKFLOW, "")]:
        (tmp_path / "keyless.wasm.sigstore.json").write_bytes(sigstore.keyless_blob_bundle(MODULE, subject, GITHUB))
        blob_status = resolve(registry, blob_key, tmp_path)
        assert blob_status == READY if not expected else expected in reason(blob_status)
    assert "is not the required" in reason(classic_keyless("classic-subject", other_workflow))
    # A key-based signature does not satisfy an identity, nor a keyless one a key.
    assert "verifies with keyless identity" in reason(outcome("key", lambda d: bundle(d, KEY)))
    keyed = ModuleKey(url_of["signed"], "", "", ((canonical_pem(KEY.public_pem),),))
    assert "verifies with the key" in reason(resolve(registry, keyed, tmp_path))


def test_keyless_flags_go_together_and_the_trust_root_is_checked(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "root.json").write_text(SigstoreInstance.create().trusted_root())
    (tmp_path / "not-a-root.json").write_text("{}")
    command = controlplane_command("render", str(tmp_path / "config"), "--require-signatures")
    identity = ["--certificate-identity", WORKFLOW, "--certificate-oidc-issuer", GITHUB]
    runs = {
        name: subprocess.run([*command, *flags], capture_output=True, text=True)
        for name, flags in {
            "ok": ["--sigstore-trust-root", str(tmp_path / "root.json"), *identity],
            "no identity": ["--sigstore-trust-root", str(tmp_path / "root.json")],
            "bad root": ["--sigstore-trust-root", str(tmp_path / "not-a-root.json"), *identity],
        }.items()
    }
    assert runs["ok"].returncode == 0, runs["ok"].stderr
    assert runs["no identity"].returncode == 2 and "go together" in runs["no identity"].stderr
    assert runs["bad root"].returncode == 2 and "not a Sigstore trusted root" in runs["bad root"].stderr


# --- http(s) and file modules: `cosign sign-blob` ------------------------------------------------------


@pytest.fixture(scope="module")
def blob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """Serves a folder over HTTP on loopback."""
    folder = tmp_path_factory.mktemp("blobs")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], folder
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_a_detached_blob_signature_is_checked_beside_http_and_file_modules(
    blob_server: tuple[int, Path], tmp_path: Path, scheme: str
) -> None:
    port, folder = blob_server
    packed = gzip.compress(MODULE, mtime=0)
    for name, content, signer in [
        ("signed.wasm", MODULE, KEY),
        ("packed.wasm.gz", packed, KEY),
        ("other-key.wasm", MODULE, OTHER_KEY),
        ("unsigned.wasm", MODULE, None),
        ("corrupt.wasm", MODULE, "corrupt"),
        ("bundled.wasm", MODULE, "bundle"),
        ("bundled-other-key.wasm", MODULE, "bundle by another key"),
    ]:
        (folder / name).write_bytes(content)
        if signer == "bundle":
            (folder / f"{name}.sigstore.json").write_bytes(blob_bundle(content, KEY))
        elif signer == "bundle by another key":
            (folder / f"{name}.sigstore.json").write_bytes(blob_bundle(content, OTHER_KEY))
        elif signer == "corrupt":
            (folder / f"{name}.sig").write_bytes(b"not base64 at all!\n")
        elif isinstance(signer, KeyPair):
            (folder / f"{name}.sig").write_bytes(sign_blob(content, signer))
    base = f"http://127.0.0.1:{port}" if scheme == "http" else f"file://{folder}"
    settings = FetchSettings(retries=0)

    def status(name: str) -> ModuleStatus:
        """The signature check alone, on what the fetch gave: the module's other checks (and their wasmtime
        compile) are the OCI tests' business."""
        key = signed_key(f"{base}/{name}", (KEY,))
        fetched = asyncio.run(fetch_module(key.url, settings))
        assert fetched is not None
        try:
            check_signatures(key, fetched, settings)
        except SignatureRejected as exc:
            return ModuleFailed(str(exc))
        return READY

    assert status("signed.wasm") == READY
    if scheme == "http":  # only downloads are unpacked
        assert status("packed.wasm.gz") == READY, "the signature covers the file as served, before unpacking"
    assert "verifies with the key" in reason(status("other-key.wasm"))
    assert f"no detached signature at {base}/unsigned.wasm.sig" in reason(status("unsigned.wasm"))
    assert "none of the 1 signature(s) found" in reason(status("corrupt.wasm"))
    assert status("bundled.wasm") == READY, "cosign 3's sign-blob bundle, when there is no .sig"
    assert f"{base}/bundled-other-key.wasm.sigstore.json" in reason(status("bundled-other-key.wasm"))
    assert ".sig (" in reason(status("unsigned.wasm")) and "nor" in reason(status("unsigned.wasm"))


def test_the_signature_url_is_the_module_path_with_sig() -> None:
    assert signature_url("https://u:p@h/a/x.wasm?token=1") == "https://u:p@h/a/x.wasm.sig?token=1"
    assert signature_url("file:///srv/x.wasm") == "file:///srv/x.wasm.sig"


# --- keys, documents, policy ---------------------------------------------------------------------------


def test_verification_keys_are_checked_by_validate_with_file_and_line(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    private_pem = KEY.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    keys = {
        "good": KEY.public_pem,
        "p384": p384.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        "private": private_pem,
        "garbage": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "text": "my-key",
    }
    for name, pem in keys.items():
        document = yaml.safe_load(wasm_plugin_yaml(name, "file://x.wasm"))
        document["spec"]["verificationKey"] = pem
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))
    loaded = load_directory([str(tmp_path)])
    errors = {Path(e.path).stem: e for e in loaded.errors}
    assert set(errors) == {"p384", "private", "garbage", "text"}
    assert all(e.field == "spec.verificationKey" and e.line > 1 for e in errors.values())
    assert "only P-256" in errors["p384"].reason
    assert "is a private key" in errors["private"].reason and "PRIVATE" not in str(errors["private"])[:-80]
    [good] = loaded.config.plugins
    assert good.verification_key == canonical_pem(KEY.public_pem)
    assert good.module.signers == ((canonical_pem(KEY.public_pem),),)


def test_the_policy_requires_the_servers_keys_in_its_namespaces_only(tmp_path: Path) -> None:
    for namespace in ("prod", "dev"):
        text = wasm_plugin_yaml("p", "file://x.wasm").replace("namespace: default", f"namespace: {namespace}")
        (tmp_path / f"{namespace}.yaml").write_text(text)
    config = load_directory([str(tmp_path)]).config
    server = canonical_pem(KEY.public_pem)
    applied = SignaturePolicy((server,), namespaces=frozenset({"prod"})).apply(config)
    signers = {p.namespace: p.module.signers for p in applied.plugins}
    assert signers == {"prod": ((server,),), "dev": ()}
    everywhere = SignaturePolicy((server,), everywhere=True).apply(config)
    assert all(p.module.signers == ((server,),) for p in everywhere.plugins)
    assert SignaturePolicy().apply(config) == config
    # The same module for two namespaces with different demands is two modules: never shared.
    assert len({r.key for r in module_requests(applied)}) == 2
    assert module_requests(Config()) == []


def test_a_verified_module_serves_after_a_restart_without_checking_again_unless_the_keys_change(
    registry: Registry, tmp_path: Path
) -> None:
    """The signature is deleted from the registry after the first pull: the restarted resolver serves the
    cached module under the same key (no check), and checks again, and fails, under another key."""
    digest = registry.push("cached/p", "1.0", MODULE)
    tag = sign_classic(registry, "cached/p", digest, KEY)
    url = f"oci://{registry.host}/cached/p:1.0"
    resolver_settings = ResolverSettings(fetch=settings(registry))

    def run(key: ModuleKey) -> ModuleStatus | None:
        async def scenario() -> ModuleStatus | None:
            cache = tmp_path / "cache"
            resolver = ModuleResolver(ModuleStore(cache), ModuleIndex(cache), resolver_settings, lambda: None)
            resolver.require([ModuleRequest(key, always=False, revision="1")])
            await resolver.settled()
            return resolver.statuses.get(key)

        return asyncio.run(scenario())

    assert run(signed_key(url, (KEY,))) == READY
    signature_manifest = registry.manifest_or_none("cached/p", tag)
    assert signature_manifest is not None
    registry.delete_manifest("cached/p", registry.descriptor("cached/p", tag)["digest"])
    assert registry.manifest_or_none("cached/p", tag) is None
    assert run(signed_key(url, (KEY,))) == READY
    assert "no cosign signature" in reason(run(signed_key(url, (OTHER_KEY,))) or ModuleFailed("none"))


def test_render_says_which_check_failed_and_renders_the_stand_in(registry: Registry, tmp_path: Path) -> None:
    registry.push("render/unsigned", "1.0", MODULE)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "p.yaml").write_text(wasm_plugin_yaml("p", f"oci://{registry.host}/render/unsigned:1.0"))
    key_file = tmp_path / "cosign.pub"
    key_file.write_text(KEY.public_pem)
    command = controlplane_command("render", str(config_dir), "--insecure-registry", registry.host)
    result = subprocess.run(
        [*command, "--verification-key", str(key_file), "--require-signatures"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "signature check failed: no cosign signature for sha256:" in result.stderr
    [extension] = yaml.safe_load(result.stdout)["extension_configs"]
    assert "rbac" in extension["typed_config"]["@type"].lower(), "the FAIL_CLOSE stand-in"
    usage = subprocess.run([*command, "--require-signatures"], capture_output=True, text=True)
    assert usage.returncode == 2 and "needs at least one --verification-key" in usage.stderr
    bad_key = subprocess.run(
        [*command, "--verification-key", str(config_dir / "p.yaml")], capture_output=True, text=True
    )
    assert bad_key.returncode == 2 and "p.yaml: expected a PEM public key" in bad_key.stderr
