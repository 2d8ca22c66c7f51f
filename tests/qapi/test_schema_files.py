"""The shipped schema, compiled for every profile."""

from __future__ import annotations

import json

import pytest

from qmp_server.qapi import EnumType, ObjectType, Schema

CAPS_72 = [
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path", "pause-before-switchover",
    "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
]
CAPS = {
    "7.2": CAPS_72,
    "default": [*CAPS_72, "precopy-initial-data"],
    "8.1": [*CAPS_72, "switchover-ack", "dirty-limit"],
    "10.0": [
        "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram",
        "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd",
        "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
        "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
        "switchover-ack", "dirty-limit", "mapped-ram",
    ],
}
PARAMS_72 = [
    "announce-initial", "announce-max", "announce-rounds", "announce-step", "compress-level",
    "compress-threads", "compress-wait-thread", "decompress-threads",
    "throttle-trigger-threshold", "cpu-throttle-initial", "cpu-throttle-increment",
    "cpu-throttle-tailslow", "tls-creds", "tls-hostname", "tls-authz", "max-bandwidth",
    "downtime-limit", "x-checkpoint-delay", "block-incremental", "multifd-channels",
    "xbzrle-cache-size", "max-postcopy-bandwidth", "max-cpu-throttle", "multifd-compression",
    "multifd-zlib-level", "multifd-zstd-level", "block-bitmap-mapping",
]
PARAMS_100 = [
    "announce-initial", "announce-max", "announce-rounds", "announce-step",
    "throttle-trigger-threshold", "cpu-throttle-initial", "cpu-throttle-increment",
    "cpu-throttle-tailslow", "tls-creds", "tls-hostname", "tls-authz", "max-bandwidth",
    "avail-switchover-bandwidth", "downtime-limit", "x-checkpoint-delay", "multifd-channels",
    "xbzrle-cache-size", "max-postcopy-bandwidth", "max-cpu-throttle", "multifd-compression",
    "multifd-zlib-level", "multifd-qatzip-level", "multifd-zstd-level", "block-bitmap-mapping",
    "x-vcpu-dirty-limit-period", "vcpu-dirty-limit", "mode", "zero-page-detection", "direct-io",
]
STATUS_72 = [
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-active", "postcopy-paused",
    "postcopy-recover", "completed", "failed", "colo", "pre-switchover", "device", "wait-unplug",
]


def _members(schema: Schema, name: str) -> list[str]:
    t = schema.lookup_type(name)
    assert isinstance(t, ObjectType)
    return [m.name for m in t.members]


@pytest.mark.parametrize("profile", list(CAPS))
def test_capability_order(schemas: dict[str, Schema], profile: str) -> None:
    caps = schemas[profile].enum_members("MigrationCapability")
    assert caps == CAPS[profile]
    assert len(caps) == {"7.2": 21, "default": 22, "8.1": 23, "10.0": 22}[profile]


def test_capability_features(schemas: dict[str, Schema]) -> None:
    for name, schema in schemas.items():
        t = schema.lookup_type("MigrationCapability")
        assert isinstance(t, EnumType)
        feats = {m.name: m.features for m in t.members if m.features}
        expected = {"x-colo": ("unstable",), "x-ignore-shared": ("unstable",)}
        assert feats == expected, name


def test_parameters(schemas: dict[str, Schema]) -> None:
    assert _members(schemas["7.2"], "MigrateSetParameters") == PARAMS_72
    assert _members(schemas["7.2"], "MigrationParameters") == PARAMS_72
    assert _members(schemas["default"], "MigrateSetParameters") == PARAMS_72
    p81 = _members(schemas["8.1"], "MigrateSetParameters")
    assert p81 == [*PARAMS_72, "x-vcpu-dirty-limit-period", "vcpu-dirty-limit"]
    assert _members(schemas["10.0"], "MigrateSetParameters") == PARAMS_100
    assert _members(schemas["10.0"], "MigrationParameters") == PARAMS_100
    for schema in schemas.values():
        setp = schema.lookup_type("MigrateSetParameters")
        getp = schema.lookup_type("MigrationParameters")
        assert isinstance(setp, ObjectType) and isinstance(getp, ObjectType)
        assert all(m.optional for m in (*setp.members, *getp.members))
        assert [m.type.name for m in setp.members if m.name.startswith("tls-")] == [
            "StrOrNull"] * 3
        assert [m.type.name for m in getp.members if m.name.startswith("tls-")] == ["str"] * 3
        assert {m.name: m.features for m in setp.members if m.features
                and "unstable" in m.features} == {
            n: ("unstable",) for n in ("x-checkpoint-delay", "x-vcpu-dirty-limit-period")
            if setp.member(n)}


def test_migration_status(schemas: dict[str, Schema]) -> None:
    for name in ("7.2", "default", "8.1"):
        assert schemas[name].enum_members("MigrationStatus") == STATUS_72
    s10 = schemas["10.0"].enum_members("MigrationStatus")
    assert s10[:7] == STATUS_72[:7]
    assert s10[7] == "postcopy-recover-setup"
    assert s10[8:] == STATUS_72[7:]


def test_status_info_and_stats(schemas: dict[str, Schema]) -> None:
    assert _members(schemas["7.2"], "StatusInfo") == ["running", "singlestep", "status"]
    assert _members(schemas["10.0"], "StatusInfo") == ["running", "status"]
    assert "skipped" in _members(schemas["8.1"], "MigrationStats")
    assert "skipped" not in _members(schemas["10.0"], "MigrationStats")
    info10 = _members(schemas["10.0"], "MigrationInfo")
    assert "compression" not in info10 and "disk" not in info10
    assert info10[-2:] == ["dirty-limit-throttle-time-per-round", "dirty-limit-ring-full-time"]
    assert len(schemas["7.2"].enum_members("RunState")) == 16
    assert schemas["7.2"].enum_members("ShutdownCause")[-1] == "snapshot-load"


def test_migrate_arguments(schemas: dict[str, Schema]) -> None:
    def args(profile: str, cmd: str) -> list[tuple[str, bool]]:
        c = schemas[profile].command(cmd)
        assert c is not None and c.arg_type is not None
        return [(m.name, m.optional) for m in c.arg_type.members]

    assert args("7.2", "migrate") == [("uri", False), ("blk", True), ("inc", True),
                                      ("detach", True), ("resume", True)]
    assert args("10.0", "migrate") == [("uri", True), ("channels", True), ("detach", True),
                                       ("resume", True)]
    assert args("7.2", "migrate-incoming") == [("uri", False)]
    assert args("10.0", "migrate-incoming") == [("uri", True), ("channels", True),
                                                ("exit-on-error", True)]


def test_commands(schemas: dict[str, Schema]) -> None:
    s72 = schemas["7.2"]
    assert s72.command("query-migrationthreads") is None
    assert schemas["10.0"].command("query-migrationthreads") is not None
    assert s72.command("nope") is None
    for name in ("migrate-recover", "migrate-pause"):
        c = s72.command(name)
        assert c is not None and c.allow_oob
    setp = s72.command("migrate-set-parameters")
    assert setp is not None and setp.boxed and setp.arg_type is not None
    assert setp.arg_type.name == "MigrateSetParameters"
    for name in ("x-set-dirty-rate", "x-query-guest-digest"):
        c = s72.command(name)
        assert c is not None and c.features == ("unstable",)
    assert list(s72.events) == ["SHUTDOWN", "STOP", "RESUME", "MIGRATION", "MIGRATION_PASS",
                                "POWERDOWN", "RESET", "BALLOON_CHANGE"]
    assert next(iter(s72.commands)) == "query-status"


def test_docs_attached(schema72: Schema) -> None:
    c = schema72.command("migrate-set-capabilities")
    assert c is not None and c.doc and "All or nothing" in c.doc


@pytest.mark.parametrize("profile", ["7.2", "default", "8.1", "10.0"])
def test_introspection_is_small(schemas: dict[str, Schema], profile: str) -> None:
    # ecosystem.md W3: go-qemu reads lines of at most 64 KiB (the started domain's block
    # types, issue 13, brought it to ~45 KiB).
    line = json.dumps({"return": schemas[profile].introspect()})
    assert len(line) < 64 * 1024
