"""Signed modules seen from a real Envoy: a module signed as cosign signs it (with a key in either layout,
or keyless) runs; an unsigned one, one signed by another key or by another keyless identity never reaches
Envoy, and the plugin's failStrategy stand-in answers instead. The other
ways a signature can be wrong are covered in-process (tests/test_signatures.py): each ends in the same
stand-in path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from controlplane.verification_keys import key_id
from tests.cosign import KeyPair, push_bundle, sign_bundle, sign_classic
from tests.registry import Registry
from tests.sigstore_instance import SigstoreInstance
from tests.support import Stack, wait_for
from tests.test_oci_envoy import MODULE, assert_plugin_runs, limit_plugin, stand_in_answers

KEY = KeyPair.create()


def with_key(text: str, key: KeyPair) -> str:
    document = yaml.safe_load(text)
    document["spec"]["verificationKey"] = key.public_pem
    return yaml.safe_dump(document, sort_keys=False)


def test_a_module_signed_in_the_classic_layout_runs_for_a_plugin_naming_the_key(
    make_stack: Callable[..., Stack], registry: Registry
) -> None:
    digest = registry.push("envoy/classic", "1.0", MODULE)
    sign_classic(registry, "envoy/classic", digest, KEY)
    stack = make_stack("--insecure-registry", registry.host)
    stack.write("limit.yaml", with_key(limit_plugin(f"oci://{registry.host}/envoy/classic:1.0"), KEY))
    assert_plugin_runs(stack)


def test_a_module_signed_with_a_bundle_runs_under_the_servers_policy(
    make_stack: Callable[..., Stack], registry: Registry, tmp_path: Path
) -> None:
    server_key = KeyPair.create("ed25519")
    (tmp_path / "platform.pub").write_text(server_key.public_pem)
    digest = registry.push("envoy/bundle", "1.0", MODULE)
    sign_bundle(registry, "envoy/bundle", digest, server_key)
    policy = ["--verification-key", str(tmp_path / "platform.pub"), "--require-signatures-in", "default"]
    stack = make_stack("--insecure-registry", registry.host, *policy)
    url = f"oci://{registry.host}/envoy/bundle:1.0"
    stack.write("limit.yaml", limit_plugin(url))
    assert_plugin_runs(stack)
    module = stack.control_plane.module(url)
    assert module["state"] == "ready" and module["signed_by"] == [f"key {key_id(server_key.public_pem)}"]


@pytest.mark.parametrize(
    ("case", "fail_strategy", "expected", "reason"),
    [
        ("unsigned", "FAIL_CLOSE", 403, "no cosign signature for sha256:"),
        ("other-key", "FAIL_OPEN", 200, "verifies with the key sha256:"),
    ],
)
def test_a_module_without_a_valid_signature_is_never_served_and_the_stand_in_answers(
    make_stack: Callable[..., Stack], registry: Registry, case: str, fail_strategy: str, expected: int, reason: str
) -> None:
    repository = f"envoy/{case}"
    digest = registry.push(repository, "1.0", MODULE)
    if case == "other-key":
        sign_classic(registry, repository, digest, KeyPair.create())
    stack = make_stack("--insecure-registry", registry.host)
    url = f"oci://{registry.host}/{repository}:1.0"
    stack.write("limit.yaml", with_key(limit_plugin(url, fail_strategy=fail_strategy), KEY))
    # A FAIL_OPEN stand-in serves while the module is fetched too: wait for the check to fail.
    wait_for(
        lambda: [m for m in stack.control_plane.status()["modules"] if m["url"] == url and m["state"] == "failed"],
        what="the signature check to fail",
    )
    stand_in_answers(stack, expected)
    module = stack.control_plane.module(url)
    assert reason in module["reason"], module
    assert "signature check failed" in stack.control_plane.process.log()
    assert not list((stack.config_dir.parent / "cache").glob("*.wasm")), "the unverified module was stored"


ISSUER = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/acme/filters/.github/workflows/release.yml@refs/tags/v1.0"


@pytest.mark.parametrize(("signed_by", "expected"), [(WORKFLOW, "runs"), (WORKFLOW.replace("acme", "mallory"), 403)])
def test_a_keyless_bundle_runs_only_for_the_required_identity(
    make_stack: Callable[..., Stack], registry: Registry, tmp_path: Path, signed_by: str, expected: object
) -> None:
    sigstore = SigstoreInstance.create()
    (tmp_path / "trusted_root.json").write_text(sigstore.trusted_root())
    repository = f"envoy/keyless-{'good' if expected == 'runs' else 'bad'}"
    digest = registry.push(repository, "1.0", MODULE)
    push_bundle(registry, repository, digest, sigstore.keyless_bundle(digest, signed_by, ISSUER))
    policy = ["--sigstore-trust-root", str(tmp_path / "trusted_root.json"), "--require-signatures"]
    identity = ["--certificate-identity", WORKFLOW, "--certificate-oidc-issuer", ISSUER]
    stack = make_stack("--insecure-registry", registry.host, *policy, *identity)
    url = f"oci://{registry.host}/{repository}:1.0"
    stack.write("limit.yaml", limit_plugin(url))
    if expected == "runs":
        assert_plugin_runs(stack)
    else:
        stand_in_answers(stack, 403)
        assert f"certificate identity {signed_by}" in stack.control_plane.module(url)["reason"]
