"""The commands users run in CI and code review: `validate --format json` and `diff OLD_DIR NEW_DIR`, run
as processes on real directories."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from controlplane.processes import controlplane_command
from tests.support import ORDER_MARKER_WASM, sidecar_yaml, wasm_plugin_yaml

pytestmark = pytest.mark.integration  # every test runs the command as a process
PREFIX = "extensions.istio.io/wasmplugin/"


def controlplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(controlplane_command(*args), capture_output=True, text=True)


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def plugin(name: str, **kwargs: object) -> str:
    kwargs.setdefault("selector", {"app": "web"})
    return wasm_plugin_yaml(name, kwargs.pop("url", "oci://example.com/plugins/x:1"), **kwargs)  # type: ignore[arg-type]


def checkout(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        write(root, name, text)
    return root


BASE = {
    "web.yaml": sidecar_yaml("web", 8080, 80, {"app": "web"}),
    "api.yaml": sidecar_yaml("api", 9090, 90, {"app": "api"}, namespace="shop"),
    "auth.yaml": plugin("auth", phase="AUTHN", config={"issuer": "a"}),
    "stats.yaml": plugin("stats", phase="STATS", priority=1),
}


# --- validate --format json -------------------------------------------------------------------------------


def test_validate_json_lists_every_error_with_path_line_field_and_reason(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", plugin("bad", phase="LATE"))
    write(tmp_path, "good.yaml", plugin("good"))
    result = controlplane("validate", "--format", "json", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout) == [
        {
            "path": str(bad),
            "line": bad.read_text().splitlines().index("  phase: LATE") + 1,
            "field": "spec.phase",
            "reason": "unknown value 'LATE'; expected one of UNSPECIFIED_PHASE, AUTHN, AUTHZ, STATS",
        }
    ]


def test_validate_json_of_a_valid_directory_is_an_empty_list(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", plugin("good"))
    result = controlplane("validate", "--format", "json", str(tmp_path))
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_validate_usage_errors_exit_2(tmp_path: Path) -> None:
    assert controlplane("validate", "--format", "yaml", str(tmp_path)).returncode == 2
    assert controlplane("validate").returncode == 2


# --- diff -------------------------------------------------------------------------------------------------


def test_diff_of_identical_directories_is_empty(tmp_path: Path) -> None:
    old, new = checkout(tmp_path / "old", BASE), checkout(tmp_path / "new", BASE)
    result = controlplane("diff", str(old), str(new))
    assert (result.returncode, result.stdout) == (0, "no proxy class changes\n")


def test_diff_shows_added_changed_and_reordered_plugins_per_proxy_class(tmp_path: Path) -> None:
    old = checkout(tmp_path / "old", BASE)
    new = checkout(
        tmp_path / "new",
        BASE
        | {
            "auth.yaml": plugin("auth", phase="AUTHN", config={"issuer": "b"}),
            "stats.yaml": plugin("stats", phase="AUTHN", priority=1),
            "limits.yaml": plugin("limits", phase="AUTHZ"),
        },
    )
    result = controlplane("diff", str(old), str(new))
    assert result.returncode == 1, result.stderr
    assert result.stdout == "\n".join(
        [
            "proxy class default/{app=web}",
            f"  + {PREFIX}default.limits",
            f"  ~ {PREFIX}default.auth: pluginConfig",
            f"  ~ {PREFIX}default.stats: phase",
            "  filters of listener inbound|8080:",
            f"    before: {PREFIX}default.auth, {PREFIX}default.stats, envoy.filters.http.router",
            f"    after:  {PREFIX}default.stats, {PREFIX}default.auth, {PREFIX}default.limits, envoy.filters.http.router",
            "",
        ]
    )


def test_diff_json_covers_root_namespace_plugins_in_every_namespace(tmp_path: Path) -> None:
    old = checkout(tmp_path / "old", BASE)
    new = checkout(tmp_path / "new", BASE | {"mesh.yaml": plugin("mesh", namespace="istio-system", selector=None)})
    result = controlplane("diff", "--format", "json", str(old), str(new))
    assert result.returncode == 1, result.stderr
    changes = {(c["namespace"], tuple(sorted(c["labels"].items()))): c for c in json.loads(result.stdout)}
    mesh = f"{PREFIX}istio-system.mesh"
    assert all(c["added"] == [mesh] for c in changes.values())
    # Every namespace either directory speaks of, with and without the labels its Sidecars select.
    assert set(changes) == {
        ("default", ()),
        ("default", (("app", "web"),)),
        ("istio-system", ()),
        ("shop", ()),
        ("shop", (("app", "api"),)),
    }
    assert changes[("shop", (("app", "api"),))]["listeners"] == [
        {
            "listener": "inbound|9090",
            "before": ["envoy.filters.http.router"],
            "after": [mesh, "envoy.filters.http.router"],
        }
    ]
    assert changes[("default", (("app", "web"),))]["sidecar"] == {"before": "default/web", "after": "default/web"}


def test_diff_compares_local_modules_by_content_not_by_checkout_path(tmp_path: Path) -> None:
    files = BASE | {"marker.yaml": plugin("marker", url="file://modules/marker.wasm", config={"name": "m"})}
    old, new = checkout(tmp_path / "old", files), checkout(tmp_path / "new", files)
    for root in (old, new):
        (root / "modules").mkdir()
        shutil.copy(ORDER_MARKER_WASM, root / "modules" / "marker.wasm")
    assert controlplane("diff", str(old), str(new)).returncode == 0

    with open(new / "modules" / "marker.wasm", "ab") as handle:
        handle.write(b"\0")
    result = controlplane("diff", str(old), str(new))
    assert result.returncode == 1
    assert f"  ~ {PREFIX}default.marker: module content" in result.stdout.splitlines()


def test_diff_warns_about_documents_that_would_not_be_served(tmp_path: Path) -> None:
    old = checkout(tmp_path / "old", BASE)
    new = checkout(tmp_path / "new", BASE | {"auth.yaml": plugin("auth", phase="LATE")})
    result = controlplane("diff", str(old), str(new))
    assert result.returncode == 1
    assert f"{PREFIX}default.auth" in result.stdout
    assert f"warning: not served: {new / 'auth.yaml'}:" in result.stderr


def test_diff_of_a_missing_directory_exits_2(tmp_path: Path) -> None:
    result = controlplane("diff", str(tmp_path), str(tmp_path / "absent"))
    assert result.returncode == 2 and "absent" in result.stderr


def test_diff_names_a_changed_url_without_printing_its_credentials(tmp_path: Path) -> None:
    def with_login(password: str) -> dict[str, str]:
        url = f"https://alice:{password}@example.com/auth.wasm?access_token=TOK-{password}"
        return BASE | {"auth.yaml": plugin("auth", phase="AUTHN", config={"issuer": "a"}, url=url)}

    old, new = checkout(tmp_path / "old", with_login("old-pw")), checkout(tmp_path / "new", with_login("new-pw"))
    for output in ("text", "json"):
        result = controlplane("diff", str(old), str(new), "--format", output)
        assert result.returncode == 1 and "url" in result.stdout, result.stderr
        assert "-pw" not in result.stdout + result.stderr
