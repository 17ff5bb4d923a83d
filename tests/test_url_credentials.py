"""A login or token in a module url never reaches a log line, `/debug/config` or `validate`'s output, however
malformed the url: the urls are written as users mistype them and run through the real commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.redaction import redact
from tests.support import REPO, Process, free_port, start_control_plane, wait_for, wasm_plugin_yaml

SECRETS = ("s3cretA", "s3cr", "etC", "etD", "t0kenB", "pa55E", "tokF")
MALFORMED = {
    "login-in-oci": "oci://user:s3cretA@127.0.0.1:9/acme/filter:1.0",
    "space-and-token": f"http://127.0.0.1:{free_port()}/x y.wasm?token=t0kenB",
    "slash-in-http-password": "https://user:s3cr/etC@127.0.0.1:9/x.wasm",
    "slash-in-oci-password": "oci://user:s3cr/etD@127.0.0.1:9/acme/filter:1.0",
    "question-mark-in-password": "https://user:pa55E?x@127.0.0.1:9/x.wasm",
    "token-in-oci-query": "oci://127.0.0.1:9/acme/filter:1.0?token=tokF",
}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("oci://user:s3cret@ghcr.io/acme/filter:1.0", "oci://ghcr.io/acme/filter:1.0"),
        ("https://user:s3cr/et@host/x.wasm", "https://host/x.wasm"),
        ("https://user:s3cr?et@host/x.wasm", "https://host/x.wasm"),
        ("https://user:s3cr#et@host/x.wasm", "https://host/x.wasm"),
        ("http://host/x y.wasm?token=t0ken", "http://host/x y.wasm"),
        ("user:s3cret@ghcr.io/acme/filter@sha256:" + "a" * 64, "ghcr.io/acme/filter@sha256:" + "a" * 64),
        ("oci://u:p/w@ghcr.io/acme/filter@sha256:" + "b" * 64, "oci://ghcr.io/acme/filter@sha256:" + "b" * 64),
        # An `@` in a query is taken for the end of a login: shown too short, never with a secret.
        ("https://host/x.wasm?token=s3cret&mail=a@b", "https://b"),
    ],
)
def test_redact_removes_a_login_wherever_a_malformed_url_puts_it(url: str, shown: str) -> None:
    assert redact(url) == shown


def write_config(config: Path) -> None:
    config.mkdir()
    (config / "plugins.yaml").write_text("---\n".join(wasm_plugin_yaml(name, url) for name, url in MALFORMED.items()))


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} shown in:\n{text}"


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.integration
def test_validate_names_the_bad_urls_without_their_credentials(tmp_path: Path, output: str) -> None:
    write_config(tmp_path / "config")
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "validate", str(tmp_path / "config"), "--format", output],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result
    assert_no_secret(result.stdout + result.stderr)
    if output == "text":
        reasons = [line.split(": ", 1)[1] for line in result.stderr.splitlines()]
    else:
        reasons = [e["field"] + ": " + e["reason"] for e in json.loads(result.stdout)]
    assert (
        "spec.url: not an OCI image reference: oci://127.0.0.1:9/acme/filter:1.0: a login cannot be given in the url; name a pull Secret in imagePullSecret"
        in reasons
    )
    assert (
        "spec.url: has a port that is not a number (a `/`, `?` or `#` in a login must be escaped: %2F, %3F, %23)"
        in reasons
    )


def test_serve_shows_and_logs_failing_urls_without_their_credentials(tmp_path: Path, processes: list[Process]) -> None:
    write_config(tmp_path / "config")
    control_plane = start_control_plane(processes, tmp_path / "config", tmp_path)
    # The one url that passes validation fails when fetched: its reason must not quote it either.
    shown = redact(MALFORMED["space-and-token"])
    wait_for(lambda: control_plane.module(shown)["state"] == "failed", what="the download to fail")
    status = json.dumps(control_plane.status())
    assert "not a valid url" in control_plane.module(shown)["reason"]
    assert "a login cannot be given in the url" in status
    assert_no_secret(status)
    assert_no_secret(control_plane.process.log())
