"""`controlplane status` against real Envoys, one of which rejects its listeners; and the command line's
log, version and certificate flags."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from controlplane.processes import controlplane_command
from tests.support import (
    REPO,
    ControlPlaneProcess,
    Process,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    wait_for,
)

pytestmark = pytest.mark.integration  # every test here runs the command


def status(control_plane: ControlPlaneProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        controlplane_command("status", "--admin-address", f"127.0.0.1:{control_plane.admin_port}", *extra),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_status_shows_synced_and_nacked_proxies_and_exits_1_on_a_nack(
    tmp_path: Path, httpbin_port: int, processes: list[Process]
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    good_port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    bad_port = taken.getsockname()[1]
    (config_dir / "good.yaml").write_text(sidecar_yaml("good", good_port, httpbin_port, {"app": "good"}))
    (config_dir / "bad.yaml").write_text(sidecar_yaml("bad", bad_port, httpbin_port, {"app": "bad"}))
    control_plane = start_control_plane(processes, config_dir, tmp_path, "--log-format", "json")
    try:
        start_envoy(processes, tmp_path, control_plane.xds_port, "good-1", labels={"app": "good"})
        wait_for(lambda: http_get(good_port).status == 200, what="the good listener")
        wait_for(lambda: status(control_plane).returncode == 0 and "SYNCED" in status(control_plane).stdout)
        synced = status(control_plane)
        [header, row] = synced.stdout.splitlines()
        assert header.split()[:5] == ["NAME", "NAMESPACE", "LABELS", "PROTOCOL", "CDS"]
        assert row.split() == ["good-1", "default", "app=good", "SOTW", "SYNCED", "SYNCED", "NOT", "SENT"]

        start_envoy(processes, tmp_path, control_plane.xds_port, "bad-1", labels={"app": "bad"}, delta=True)
        nacked = wait_for(lambda: (r := status(control_plane)).returncode == 1 and r, what="a NACK in status")
        lines = nacked.stdout.splitlines()
        [bad_row] = [line for line in lines if line.startswith("bad-1 ") and "NACKED:" not in line]
        assert bad_row.split()[3:6] == ["Delta", "SYNCED", "NACKED"]
        [message] = [line for line in lines if line.startswith("bad-1 LDS NACKED: ")]
        assert "Address already in use" in message
        as_json = json.loads(status(control_plane, "--output", "json").stdout)
        assert {p["node"]: p["sync"]["LDS"] for p in as_json} == {"good-1": "SYNCED", "bad-1": "NACKED"}
    finally:
        taken.close()
    # Every line the server logged itself is one JSON object (gRPC's own C core logs apart).
    entries = [json.loads(line) for line in control_plane.process.log().splitlines() if line.startswith("{")]
    assert any(e["message"].startswith("serving 0 WasmPlugin(s) and 2 Sidecar(s)") for e in entries)
    assert {"time", "level", "logger", "message"} <= set(entries[0])


def test_status_exits_2_when_the_admin_port_does_not_answer() -> None:
    result = subprocess.run(
        controlplane_command("status", "--admin-address", f"127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_version_and_log_flags_after_the_subcommand(tmp_path: Path) -> None:
    version = subprocess.run(controlplane_command("--version"), capture_output=True, text=True, cwd=REPO)
    assert version.returncode == 0 and version.stdout.startswith("controlplane ")
    validate = subprocess.run(
        controlplane_command("validate", str(tmp_path), "--log-level", "debug", "--log-format", "json"),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert validate.returncode == 0, validate.stderr


def test_certificate_flags_that_cannot_work_are_usage_errors(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(controlplane_command(*args), capture_output=True, text=True, timeout=30, cwd=REPO)

    missing = run("serve", "--config-dir", str(tmp_path), "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", "k")
    assert missing.returncode == 2 and "no.pem" in missing.stderr
    alone = run("serve", "--config-dir", str(tmp_path), "--client-ca", str(tmp_path / "ca.pem"))
    assert alone.returncode == 2 and "--client-ca needs --tls-cert" in alone.stderr
    no_ca = run("bootstrap", "--node-id", "n", "--tls-cert", "c.pem", "--tls-key", "k.pem")
    assert no_ca.returncode == 2 and "--tls-ca" in no_ca.stderr
