"""Capability enum orders and every migrate_caps_check rule, per profile.

Texts marked "live" were checked against QEMU 7.2.22 (Debian) over QMP.
"""

from __future__ import annotations

import pytest

from qmp_server.engine.capabilities import (
    CAPABILITIES,
    CapsContext,
    capability_names,
    check_capabilities,
    running_states,
)
from qmp_server.engine.host import HostInfo
from qmp_server.profiles import PROFILES

P72, PDEF, P81, P100 = (PROFILES[k] for k in ("7.2", "default", "8.1", "10.0"))
ALL = [P72, PDEF, P81, P100]
HOST = HostInfo()

# The live 7.2 query-migrate-capabilities order.
LIVE_72 = [
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path", "pause-before-switchover",
    "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
]  # fmt: skip


def check(profile, *on, old=(), host=HOST, ctx=None):
    names = capability_names(profile)
    old_caps = {n: n in old for n in names}
    new = {n: n in on for n in names}
    return check_capabilities(profile, host, old_caps, new, ctx)


def test_orders_and_counts():
    assert list(capability_names(P72)) == LIVE_72
    assert list(capability_names(PDEF)) == [*LIVE_72, "precopy-initial-data"]
    assert list(capability_names(P81)) == [*LIVE_72, "switchover-ack", "dirty-limit"]
    latest = [c for c in LIVE_72 if c not in ("compress", "block")]
    assert list(capability_names(P100)) == [*latest, "switchover-ack", "dirty-limit", "mapped-ram"]
    assert [len(CAPABILITIES[p.name]) for p in ALL] == [21, 22, 23, 22]


@pytest.mark.parametrize("profile", ALL, ids=lambda p: p.name)
def test_all_false_and_each_harmless_cap_alone(profile):
    assert check(profile) is None
    for cap in ("xbzrle", "events", "return-path", "pause-before-switchover", "x-colo"):
        assert check(profile, cap) is None


@pytest.mark.parametrize("profile", ALL, ids=lambda p: p.name)
def test_common_texts(profile):
    assert check(profile, "postcopy-ram", "x-ignore-shared") == (
        "Postcopy is not compatible with ignore-shared"
    )  # live
    assert check(profile, "postcopy-preempt") == "Postcopy preempt requires postcopy-ram"  # live
    assert check(profile, "zero-copy-send") == (
        "Zero copy only available for non-compressed non-TLS multifd migration"
    )  # live
    assert check(profile, "zero-copy-send", "multifd") is None  # live
    assert check(profile, "background-snapshot") is None  # live (default host)
    assert check(profile, "background-snapshot", "x-colo") == (
        "Background-snapshot is not compatible with x-colo"
    )  # live


@pytest.mark.parametrize("profile", [P72, PDEF, P81], ids=lambda p: p.name)
def test_compress_rules(profile):
    assert check(profile, "multifd", "compress") == "Multifd is not compatible with compress"
    assert check(profile, "postcopy-ram", "postcopy-preempt", "compress") == (
        "Postcopy preempt not compatible with compress"
    )
    assert check(profile, "zero-copy-send", "multifd", "compress") == (
        "Zero copy only available for non-compressed non-TLS multifd migration"
    )


def test_snapshot_conflict_order():
    # postcopy-ram comes first in QEMU's list, validate-uuid late
    assert check(P72, "background-snapshot", "validate-uuid", "postcopy-ram") == (
        "Background-snapshot is not compatible with postcopy-ram"
    )
    assert check(P72, "background-snapshot", "multifd", "compress") == (
        "Background-snapshot is not compatible with multifd"
    )  # live (multifd)
    assert check(P100, "background-snapshot", "return-path", "switchover-ack") == (
        "Background-snapshot is not compatible with return-path"
    )  # 10.0 live
    assert check(P72, "background-snapshot", "events", "zero-blocks") is None


@pytest.mark.parametrize("profile", ALL, ids=lambda p: p.name)
def test_host_refusals(profile):
    assert check(profile, "background-snapshot", host=HostInfo(uffd_wp=False)) == (
        "Background-snapshot is not supported by host kernel"
    )  # live 7.2 as an unprivileged user
    assert check(profile, "background-snapshot", host=HostInfo(snapshot_memory=False)) == (
        "Background-snapshot is not compatible with guest memory configuration"
    )
    assert check(profile, "x-colo", host=HostInfo(replication=False)) == (
        "QEMU compiled without replication module can't enable COLO"
    )
    assert check(profile, "zero-copy-send", "multifd", host=HostInfo(linux=False)) == (
        "Zero copy currently only available on Linux"
    )


def test_block_build():
    host = HostInfo(live_block_migration=False)
    text = "QEMU compiled without old-style (blk/-b, inc/-i) block migration"
    assert check(P72, "block", host=host) == text
    assert check(P81, "block", host=host) == text
    assert check(P72, "block") is None


def test_postcopy_userfaultfd():
    host = HostInfo(userfaultfd=False)
    dest = CapsContext(inmigrate=True)
    assert check(P72, "postcopy-ram", host=host, ctx=dest) == "Postcopy is not supported"  # live
    assert check(PDEF, "postcopy-ram", host=host, ctx=dest) == "Postcopy is not supported"
    assert check(P81, "postcopy-ram", host=host, ctx=dest).startswith("Postcopy is not supported: ")
    # the source never needs userfaultfd; an already-enabled capability is not re-checked
    assert check(P72, "postcopy-ram", host=host) is None  # live
    assert check(P72, "postcopy-ram", old=("postcopy-ram",), host=host, ctx=dest) is None


def test_72_multifd_protocol_rule():
    for uri in ("exec:cat", "foo:bar", "fd:3", "rdma:1.2.3.4:5"):
        ctx = CapsContext(inmigrate=True, incoming_uri=uri)
        assert check(P72, "multifd", ctx=ctx) == "multifd is not supported by current protocol"
        assert check(P72, "xbzrle", "multifd", ctx=ctx) == (
            "multifd is not supported by current protocol"
        )  # live: the whole set is checked
    for uri in (None, "tcp:127.0.0.1:0", "unix:/tmp/x", "vsock:3:4"):
        assert check(P72, "multifd", ctx=CapsContext(inmigrate=True, incoming_uri=uri)) is None
    ctx = CapsContext(inmigrate=True, incoming_uri="exec:cat")
    # live order: zero-copy before the protocol rule, protocol before compress/preempt
    assert check(P72, "multifd", "compress", ctx=ctx) == (
        "multifd is not supported by current protocol"
    )
    assert check(P72, "multifd", "postcopy-preempt", ctx=ctx) == (
        "multifd is not supported by current protocol"
    )
    assert check(P72, "multifd", "zero-copy-send", "xbzrle", ctx=ctx) == (
        "Zero copy only available for non-compressed non-TLS multifd migration"
    )
    # not a destination (runstate not inmigrate): no rule
    assert check(P72, "multifd", ctx=CapsContext(incoming_uri="exec:cat")) is None
    assert check(P81, "multifd", ctx=ctx) is None


def test_72_has_none_of_the_later_rules():
    for caps in (("multifd", "xbzrle"), ("compress", "xbzrle"), ("postcopy-ram", "multifd")):
        assert check(P72, *caps) is None
    started = CapsContext(inmigrate=True, incoming_started=True, incoming_uri="tcp:x:1")
    assert check(P72, "multifd", ctx=started) is None  # live: accepted after listening


def test_zero_copy_parameters():
    zc = ("zero-copy-send", "multifd")
    text = "Zero copy only available for non-compressed non-TLS multifd migration"
    for profile in ALL:
        assert check(profile, *zc, ctx=CapsContext(tls_creds="x")) == text  # live
        assert check(profile, *zc, ctx=CapsContext(multifd_compression="zstd")) == text  # live
        assert check(profile, *zc, "xbzrle") == text


def test_seed_rule_default_profile():
    text = "Capability 'precopy-initial-data' requires capability 'return-path'"
    assert check(PDEF, "precopy-initial-data") == text
    assert check(PDEF, "precopy-initial-data", "return-path") is None
    assert check(PDEF, "multifd", "compress", "precopy-initial-data") == (
        "Multifd is not compatible with compress"
    )


@pytest.mark.parametrize("profile", [P81, P100], ids=lambda p: p.name)
def test_81_and_later(profile):
    ack = "Capability 'switchover-ack' requires capability 'return-path'"
    assert check(profile, "switchover-ack") == ack
    assert check(profile, "switchover-ack", "return-path") is None
    assert check(profile, "postcopy-ram", "multifd") == (
        "Postcopy is not yet compatible with multifd"
    )
    assert check(profile, "dirty-limit", "auto-converge") == (
        "dirty-limit conflicts with auto-converge either of then available currently"
    )
    assert check(profile, "dirty-limit") == (
        "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"
    )
    assert check(profile, "dirty-limit", host=HostInfo(kvm_dirty_ring=True)) is None
    assert check(profile, "multifd", "xbzrle") == "Multifd is not compatible with xbzrle"
    started = CapsContext(inmigrate=True, incoming_started=True)
    assert check(profile, "multifd", ctx=started) == "Multifd must be set before incoming starts"
    assert check(profile, "postcopy-ram", "postcopy-preempt", ctx=started) == (
        "Postcopy preempt must be set before incoming starts"
    )


def test_incoming_started_only_when_newly_enabled_in_10_0():
    started = CapsContext(inmigrate=True, incoming_started=True)
    assert check(P100, "multifd", "events", old=("multifd",), ctx=started) is None
    assert check(P81, "multifd", "events", old=("multifd",), ctx=started) == (
        "Multifd must be set before incoming starts"
    )
    pre = ("postcopy-ram", "postcopy-preempt")
    assert check(P100, *pre, old=pre, ctx=started) is None


def test_81_compress_xbzrle_and_10_0_mapped_ram():
    assert check(P81, "compress", "xbzrle") == "Compression is not compatible with xbzrle"
    assert check(P100, "mapped-ram") is None
    assert check(P100, "mapped-ram", "xbzrle") == (
        "Mapped-ram migration is incompatible with xbzrle"
    )
    assert check(P100, "mapped-ram", "postcopy-ram") == (
        "Mapped-ram migration is incompatible with postcopy"
    )


def test_running_states():
    assert "colo" not in running_states(P72)
    assert "colo" in running_states(P81)
    assert "postcopy-recover-setup" in running_states(P100)
    for profile in ALL:
        assert {"completed", "failed", "cancelled", "none"}.isdisjoint(running_states(profile))
