"""The Kubernetes manifests of deploy/kubernetes, checked offline: each resource against the Kubernetes
schemas (kubernetes-validate ships them), and the git-sync link, ports, probes and Secret against the
flags the server really takes (its argparse parser), so that a flag renamed in the code breaks this test
rather than a rollout."""

from __future__ import annotations

import argparse
import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import REPO, serve_args

MANIFESTS = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
"""Native sidecars (an init container with restartPolicy: Always) are on by default from 1.29 and GA in
1.33; the newest schemas kubernetes-validate ships are checked too."""
TLS_FILES = {"tls.crt", "tls.key", "ca.crt"}
"""The keys cert-manager writes into a certificate's Secret."""


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())


@cache
def resources() -> list[dict[str, Any]]:
    """What `kubectl apply -k` would apply, as far as these manifests use kustomize: the listed files, the
    generated ConfigMaps and the namespace. Generated names keep no hash suffix here."""
    documents = [
        document
        for name in kustomization()["resources"]
        for document in yaml.safe_load_all((MANIFESTS / name).read_text())
    ]
    for generator in kustomization().get("configMapGenerator", []):
        data = dict(literal.split("=", 1) for literal in generator["literals"])
        documents.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return documents


def resource(kind: str, name: str = "") -> dict[str, Any]:
    [found] = [r for r in resources() if r["kind"] == kind and (not name or r["metadata"]["name"] == name)]
    return found


def pod() -> dict[str, Any]:
    return resource("Deployment")["spec"]["template"]


def container(name: str) -> dict[str, Any]:
    spec = pod()["spec"]
    [found] = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


def env(container_spec: dict[str, Any]) -> dict[str, str]:
    """A container's environment: its own values and the ConfigMaps it takes whole."""
    values: dict[str, str] = {}
    for source in container_spec.get("envFrom", []):
        values.update(resource("ConfigMap", source["configMapRef"]["name"])["data"])
    values.update({e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e})
    return values


def server_args() -> argparse.Namespace:
    """The control plane container's arguments as `controlplane serve` reads them, after Kubernetes
    expands $(VAR) from the container's environment (the namespace as kustomize sets it)."""
    spec = container("controlplane")
    variables = {"POD_NAMESPACE": kustomization()["namespace"]}
    declared = {e["name"] for e in spec.get("env", [])}
    args = []
    for arg in spec["args"]:
        for name in re.findall(r"\$\((\w+)\)", arg):
            assert name in declared, f"{arg}: $({name}) is not in the container's env"
            arg = arg.replace(f"$({name})", variables[name])
        args.append(arg)
    return serve_args(args)


def container_port(spec: dict[str, Any], port: int | str) -> int:
    """A port given by number or by the container's name for it."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in spec["ports"] if p["name"] == port]
    return number


def mount_of(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount of `spec` under which `path` lies."""
    mounts = [m for m in spec.get("volumeMounts", []) if Path(path).is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of {spec['name']}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    for document in resources():
        kubernetes_validate.validate(document, version, strict=True)


def test_an_invalid_field_is_caught_by_the_schema_check() -> None:
    """The check runs offline and does fail: a typo in a probe is reported."""
    deployment = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_every_listed_file_exists_and_every_manifest_is_listed() -> None:
    listed = set(kustomization()["resources"])
    assert all((MANIFESTS / name).is_file() for name in listed)
    assert {p.name for p in MANIFESTS.glob("*.yaml")} - listed == {"kustomization.yaml"}


def test_config_dir_is_git_syncs_link_on_the_volume_git_sync_writes() -> None:
    args = server_args()
    sync = container("git-sync")
    sync_env = env(sync)
    link = Path(sync_env["GITSYNC_ROOT"]) / sync_env["GITSYNC_LINK"]
    assert args.config_dir == [str(link)]
    assert {"GITSYNC_REPO", "GITSYNC_REF"} <= set(sync_env), "the repository and branch are settings"
    assert mount_of(container("controlplane"), str(link))["name"] == mount_of(sync, sync_env["GITSYNC_ROOT"])["name"]
    # The control plane starts only after the first sync: a sidecar whose startup probe asks git-sync.
    assert sync["restartPolicy"] == "Always" and sync in pod()["spec"]["initContainers"]
    assert container_port(sync, sync["startupProbe"]["httpGet"]["port"]) == int(
        sync_env["GITSYNC_HTTP_BIND"].split(":")[-1]
    )


def test_ports_and_probes_are_the_ones_the_server_listens_on() -> None:
    args = server_args()
    spec = container("controlplane")
    assert args.host == "0.0.0.0"
    assert container_port(spec, "xds") == args.xds_port
    assert container_port(spec, "http") == args.http_port
    health_port = getattr(args, "admin_port", None) or args.http_port
    assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container_port(spec, spec[probe]["httpGet"]["port"]) == health_port, probe
    cache_mount = mount_of(spec, args.cache_dir)
    assert not cache_mount.get("readOnly") and cache_mount["mountPath"] == args.cache_dir


def test_services_reach_the_replicas() -> None:
    args = server_args()
    spec = container("controlplane")
    labels = pod()["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in resources() if s["kind"] == "Service"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            container_port(spec, port["targetPort"])
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    assert [container_port(spec, p["targetPort"]) for s in headless for p in s["spec"]["ports"]] == [args.xds_port]


def test_replicas_spread_over_nodes_and_one_at_a_time_may_go() -> None:
    deployment = resource("Deployment")
    labels = pod()["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = {c["topologyKey"]: c for c in pod()["spec"]["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert all(c["labelSelector"]["matchLabels"].items() <= labels.items() for c in spread.values())
    budget = resource("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("controlplane", "git-sync"):
        assert {"cpu", "memory"} <= set(container(name)["resources"]["requests"]), name


def test_no_kubernetes_api_access_and_no_root() -> None:
    account = resource("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    spec = pod()["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False
    assert not [r for r in resources() if r["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    assert spec["securityContext"]["runAsNonRoot"] is True
    for name in ("controlplane", "git-sync"):
        context = container(name)["securityContext"]
        assert context["runAsUser"] != 0 and context["allowPrivilegeEscalation"] is False, name


def test_only_proxies_reach_the_xds_and_module_ports() -> None:
    policy = resource("NetworkPolicy")
    spec = container("controlplane")
    args = server_args()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod()["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert all(peer["podSelector"]["matchLabels"] for peer in rule["from"]), "every peer is a selected proxy"
    assert sorted(container_port(spec, p["port"]) for p in rule["ports"]) == sorted([args.xds_port, args.http_port])


def test_tls_secret_is_mounted_as_cert_manager_writes_it() -> None:
    [volume] = [v for v in pod()["spec"]["volumes"] if "secret" in v]
    certificate = yaml.safe_load((MANIFESTS / "mtls" / "certificate.yaml").read_text())
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    spec = container("controlplane")
    [mount] = [m for m in spec["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    dns_names = {
        f"{s['metadata']['name']}.{kustomization()['namespace']}.svc" for s in resources() if s["kind"] == "Service"
    }
    assert set(certificate["spec"]["dnsNames"]) == dns_names
    # Whichever of the server's flags name a file in that Secret name one cert-manager writes.
    args = vars(server_args())
    for flag, value in args.items():
        if isinstance(value, str) and value.startswith(mount["mountPath"] + "/"):
            assert Path(value).name in TLS_FILES, flag


def test_kubernetes_bootstrap_reaches_every_replica_through_the_headless_service() -> None:
    """tests/test_packaging.py checks that the file is what `controlplane bootstrap` writes and that Envoy
    takes it; tests/test_replicas.py that a bootstrap of this shape fails over between replicas."""
    headless = next(s for s in resources() if s["kind"] == "Service" and s["spec"].get("clusterIP") == "None")
    [port] = headless["spec"]["ports"]
    committed = yaml.safe_load((REPO / "envoy" / "bootstrap-kubernetes.yaml").read_text())
    [cluster] = committed["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS", "one endpoint per replica the name resolves to"
    [endpoint] = [
        e["endpoint"]["address"]["socket_address"]
        for g in cluster["load_assignment"]["endpoints"]
        for e in g["lb_endpoints"]
    ]
    assert endpoint == {
        "address": f"{headless['metadata']['name']}.{kustomization()['namespace']}.svc",
        "port_value": port["port"],
    }


def json_patched(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """`document` after the JSON patch (RFC 6902) operations `add` and `replace`, as kustomize applies them;
    a path that does not exist fails, as it fails there."""
    patched = copy.deepcopy(document)
    for operation in operations:
        *parents, last = operation["path"].lstrip("/").split("/")
        target: Any = patched
        for step in parents:
            target = target[int(step)] if isinstance(target, list) else target[step]
        if operation["op"] == "add" and isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), operation["value"])
        elif operation["op"] in ("add", "replace"):
            key: Any = int(last) if isinstance(target, list) else last
            if operation["op"] == "replace":
                assert key in target if isinstance(target, dict) else key < len(target), operation["path"]
            target[key] = operation["value"]
        else:
            raise AssertionError(f"unexpected operation {operation['op']}")
    return patched


def test_mtls_overlay_starts_the_server_with_the_secrets_files() -> None:
    """deploy/kubernetes/mtls: the base plus cert-manager's Certificate, and the server given the Secret's
    certificate, key and CA, with the Secret required; the patched Deployment is still a valid one."""
    overlay_dir = MANIFESTS / "mtls"
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["..", "certificate.yaml"]
    [patch] = overlay["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": resource("Deployment")["metadata"]["name"]}
    deployment = json_patched(resource("Deployment"), yaml.safe_load((overlay_dir / patch["path"]).read_text()))
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
    [spec] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "controlplane"]
    args = serve_args(spec["args"])
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["optional"] is False
    [mount] = [m for m in spec["volumeMounts"] if m["name"] == volume["name"]]
    files = {args.tls_cert: "tls.crt", args.tls_key: "tls.key", args.client_ca: "ca.crt"}
    for path, name in files.items():
        assert path == f"{mount['mountPath']}/{name}", files
    certificate = yaml.safe_load((overlay_dir / "certificate.yaml").read_text())
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"]
