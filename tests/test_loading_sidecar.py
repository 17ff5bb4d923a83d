"""Sidecar documents: every networking API version, namespace-wide ones, and defaultEndpoint forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.model import EgressHost, EgressPort, IngressPort, Sidecar, SourceRef
from tests.loading import load, sidecar, write


@pytest.mark.parametrize(
    "api_version", ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]
)
def test_sidecar_is_read_in_every_networking_api_version(tmp_path: Path, api_version: str) -> None:
    path = write(
        tmp_path,
        "sidecar.yaml",
        sidecar(
            """
        workloadSelector:
          labels:
            app: web
        ingress:
        - port:
            number: 8080
            protocol: http
            name: web
          defaultEndpoint: 127.0.0.1:9000
        - port:
            number: 9090
            protocol: TCP
          bind: 127.0.0.1
          defaultEndpoint: unix:///var/run/app.sock
        egress:
        - hosts: ["./*"]
        """,
            api_version=api_version,
        ),
    )
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert loaded.config.sidecars == (
        Sidecar(
            namespace="default",
            name="sidecar",
            workload_labels=(("app", "web"),),
            ingress=(
                IngressPort(8080, "HTTP", "web", "", "127.0.0.1:9000"),
                IngressPort(9090, "TCP", "", "127.0.0.1", "unix:///var/run/app.sock"),
            ),
            source=SourceRef(str(path), 1),
            egress=(EgressPort(0, "", "", "127.0.0.1", (EgressHost(".", "*"),)),),
        ),
    )


def test_sidecar_without_workload_selector_is_namespace_wide(tmp_path: Path) -> None:
    write(tmp_path, "sidecar.yaml", sidecar("ingress:\n- port: {number: 80}\n  defaultEndpoint: app:8080"))
    (value,) = load(tmp_path).config.sidecars
    assert value.workload_labels is None
    assert value.ingress == (IngressPort(80, "", "", "", "app:8080"),)


def test_a_default_endpoint_without_a_host_is_valid_as_in_istio(tmp_path: Path) -> None:
    write(tmp_path, "sidecar.yaml", sidecar("ingress:\n- port: {number: 80}\n  defaultEndpoint: ':8080'"))
    loaded = load(tmp_path)
    assert loaded.errors == ()
    assert loaded.config.sidecars[0].ingress[0].default_endpoint == ":8080"
