"""Two tiers: tests that start a real process (Envoy, httpbin, a registry, the control plane or its command
as a subprocess) are marked `integration`; the rest run in-process and are the inner loop
(`pytest -m "not integration"`). A test is marked by the fixtures that start processes, or by hand; an
unmarked test that starts a process fails, so the unit tier cannot grow slow unnoticed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.registry import Registry, start_registry
from tests.support import (
    Process,
    Stack,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    start_httpbin,
    wait_for,
)

PROCESS_FIXTURES = frozenset({"processes", "httpbin_port", "registry", "private_registry"})
"""Fixtures that start real processes: a test using one, directly or through another fixture, is marked."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it integration")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


@pytest.fixture(scope="session")
def httpbin_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port = start_httpbin(tmp_path_factory.mktemp("httpbin"))
    yield port
    process.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real OCI registry (Debian's docker-registry), anonymous and plain HTTP, one per test module."""
    started = start_registry(tmp_path_factory.mktemp("registry"))
    yield started
    started.stop()


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Process]]:
    """Processes a test starts; stopped after it, and their logs printed when it failed."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for process in started:
            print(f"----- {process.name} log -----\n{process.log()[-6000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def make_stack(
    tmp_path: Path, httpbin_port: int, processes: list[Process], request: pytest.FixtureRequest
) -> Callable[..., Stack]:
    """Starts Envoy in front of httpbin, configured by a control plane (given extra `serve` flags) watching
    `config_dir`; state of the world unless the test is parametrized with "delta"."""

    def make(*extra: str) -> Stack:
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        port = free_port()
        (config_dir / "sidecar.yaml").write_text(sidecar_yaml("httpbin", port, httpbin_port, {"app": "httpbin"}))
        control_plane = start_control_plane(processes, config_dir, tmp_path, *extra)
        delta = getattr(request, "param", "sotw") == "delta"
        envoy = start_envoy(
            processes, tmp_path, control_plane.xds_port, "httpbin-1", labels={"app": "httpbin"}, delta=delta
        )
        wait_for(lambda: http_get(port).status == 200, what="the listener to serve")
        return Stack(config_dir, control_plane, envoy, port)

    return make


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
