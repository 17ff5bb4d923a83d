"""What snapshot building remembers between builds: the plugins each ECDS-only class was sent (a deleted
one gets a pass-through config until the class's last stream goes) and each plugin's config with its module
inside (made once for every class, forgotten once its module state is gone). In-process: model values in, snapshots out."""

from __future__ import annotations

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2

from controlplane.model import Config, ModuleFailed, ModuleKey, ModuleReady, ModuleStatus, ProxyClass, labels_from
from controlplane.snapshots.builder import SnapshotBuilder
from controlplane.translate.resources import TranslateSettings
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot
from tests.test_translation import plugin, sidecar

SHA_A, SHA_B = "aa" * 32, "bb" * 32
ECDS_ONLY = ProxyClass("default", labels_from({"app": "web"}), standalone_ecds=True)
ADS = ProxyClass("default", labels_from({"app": "web"}))
PREFIX = "extensions.istio.io/wasmplugin/default."


class Modules:
    """Module bytes by sha256, counting reads."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def __call__(self, sha256: str) -> bytes:
        self.reads.append(sha256)
        return b"\0asm" + bytes.fromhex(sha256)[:4]


def configs(snapshot: Snapshot) -> dict[str, extension_pb2.TypedExtensionConfig]:
    result = {}
    for name, resource in snapshot.resources(EXTENSION_CONFIG).items.items():
        config = extension_pb2.TypedExtensionConfig()
        assert resource.body.Unpack(config)
        result[name] = config
    return result


def filter_kind(config: extension_pb2.TypedExtensionConfig) -> str:
    return config.typed_config.type_url.rsplit(".", 1)[-1]


def inline_code(config: extension_pb2.TypedExtensionConfig) -> bytes:
    wasm = http_wasm_pb2.Wasm()
    assert config.typed_config.Unpack(wasm)
    return bytes(wasm.config.vm_config.code.local.inline_bytes)


def statuses(**by_name: ModuleStatus) -> dict[ModuleKey, ModuleStatus]:
    return {plugin(name).module: status for name, status in by_name.items()}


def test_an_ads_class_gets_clusters_listeners_and_configs_and_nothing_is_remembered() -> None:
    modules = Modules()
    builder = SnapshotBuilder(TranslateSettings(), modules)
    config = Config(plugins=(plugin("a"),), sidecars=(sidecar("web"),))
    snapshot = builder.build(config, statuses(a=ModuleReady(SHA_A, 8)), ADS)
    assert set(snapshot.resources(CLUSTER).items) == {"inbound|8080||"}
    assert set(snapshot.resources(LISTENER).items) == {"inbound|8080"}
    assert set(configs(snapshot)) == {PREFIX + "a"}
    assert inline_code(configs(snapshot)[PREFIX + "a"]) == modules(SHA_A), "the module inside the config"
    gone = builder.build(Config(sidecars=(sidecar("web"),)), {}, ADS)
    assert configs(gone) == {}, "its listener drops the filter, so the config goes"


def test_a_plugin_deleted_from_the_directory_stays_a_pass_through_until_the_class_is_forgotten() -> None:
    builder = SnapshotBuilder(TranslateSettings(), Modules())
    both = Config(plugins=(plugin("a"), plugin("b")))
    builder.build(both, statuses(a=ModuleReady(SHA_A, 8), b=ModuleReady(SHA_B, 8)), ECDS_ONLY)
    after = configs(builder.build(Config(plugins=(plugin("a"),)), statuses(a=ModuleReady(SHA_A, 8)), ECDS_ONLY))
    assert filter_kind(after[PREFIX + "a"]) == "Wasm"
    assert filter_kind(after[PREFIX + "b"]) == "RBAC", "its own listener still names it"
    rbac = http_rbac_pb2.RBAC()
    assert after[PREFIX + "b"].typed_config.Unpack(rbac) and not rbac.HasField("rules"), "lets every request through"
    other = ProxyClass("default", labels_from({"app": "other"}), standalone_ecds=True)
    assert PREFIX + "b" not in configs(builder.build(Config(), {}, other)), "another class was never sent it"
    builder.forget(ECDS_ONLY)
    assert configs(builder.build(Config(), {}, ECDS_ONLY)) == {}, "a new stream of the class starts afresh"


def test_each_plugin_config_is_made_once_for_every_class_and_remade_once_its_module_state_went_away() -> None:
    modules = Modules()
    builder = SnapshotBuilder(TranslateSettings(), modules)
    config = Config(plugins=(plugin("a"), plugin("b")), sidecars=(sidecar("web"),))
    both_ready = statuses(a=ModuleReady(SHA_A, 8), b=ModuleReady(SHA_B, 8))
    first = builder.build(config, both_ready, ECDS_ONLY)
    assert inline_code(configs(first)[PREFIX + "a"]) == modules(SHA_A)
    assert inline_code(configs(first)[PREFIX + "b"]) == modules(SHA_B)
    modules.reads.clear()
    other = ProxyClass("default", labels_from({"app": "other"}), standalone_ecds=True)
    again, elsewhere = builder.build(config, both_ready, ADS), builder.build(config, both_ready, other)
    assert modules.reads == [], "made once, shared between classes"
    for snapshot in (again, elsewhere):
        shared = snapshot.resources(EXTENSION_CONFIG).items[PREFIX + "a"].body
        assert shared is first.resources(EXTENSION_CONFIG).items[PREFIX + "a"].body, "one copy of the module"
    b_failed = statuses(a=ModuleReady(SHA_A, 8), b=ModuleFailed("gone"))
    builder.retain(config, b_failed)
    builder.build(config, b_failed, ECDS_ONLY)
    assert modules.reads == []
    builder.retain(config, both_ready)
    builder.build(config, both_ready, ECDS_ONLY)
    assert modules.reads == [SHA_B], "forgotten while its module was not ready, so made again"


def test_with_local_delivery_ecds_only_classes_get_a_file_name_and_nothing_is_read() -> None:
    modules = Modules()
    builder = SnapshotBuilder(TranslateSettings(module_delivery="local", local_module_dir="/cache"), modules)
    snapshot = builder.build(Config(plugins=(plugin("a"),)), statuses(a=ModuleReady(SHA_A, 8)), ECDS_ONLY)
    wasm = http_wasm_pb2.Wasm()
    assert configs(snapshot)[PREFIX + "a"].typed_config.Unpack(wasm)
    assert wasm.config.vm_config.code.local.filename == f"/cache/{SHA_A}.wasm"
    assert modules.reads == []


def test_equal_inputs_give_equal_versions_across_builders() -> None:
    config = Config(plugins=(plugin("a"),), sidecars=(sidecar("web"),))
    ready = statuses(a=ModuleReady(SHA_A, 8))
    first = SnapshotBuilder(TranslateSettings(), Modules()).build(config, ready, ECDS_ONLY)
    second = SnapshotBuilder(TranslateSettings(), Modules()).build(config, ready, ECDS_ONLY)
    assert first.version == second.version, "a replica or a restart serves the same versions"
    assert SnapshotBuilder(TranslateSettings(), Modules()).build(config, {}, ECDS_ONLY).version != first.version
