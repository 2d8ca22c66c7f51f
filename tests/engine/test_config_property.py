"""Property tests: migrate-set-capabilities is accepted iff the merged set obeys the rules.

The predicate below is written independently of qmp_server.engine.capabilities, as a list of
forbidden combinations per profile (default host: no KVM dirty ring; a source VM).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine.capabilities import capability_names
from qmp_server.engine.config import MigrationConfig
from qmp_server.engine.host import HostInfo
from qmp_server.errors import CommandError
from qmp_server.profiles import PROFILES

SNAPSHOT_CONFLICTS = {
    "postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate",
    "return-path", "multifd", "pause-before-switchover", "auto-converge", "release-ram",
    "rdma-pin-all", "compress", "xbzrle", "x-colo", "validate-uuid", "zero-copy-send",
}  # fmt: skip


def acceptable(profile_key: str, on: set[str]) -> bool:
    bad = [
        {"postcopy-ram", "x-ignore-shared"} <= on,
        "background-snapshot" in on and bool(on & SNAPSHOT_CONFLICTS),
        "zero-copy-send" in on and ("multifd" not in on or bool(on & {"compress", "xbzrle"})),
        "postcopy-preempt" in on and ("postcopy-ram" not in on or "compress" in on),
        {"multifd", "compress"} <= on,
    ]
    if profile_key == "default":
        bad.append("precopy-initial-data" in on and "return-path" not in on)
    if profile_key in ("8.1", "10.0"):
        bad += [
            {"postcopy-ram", "multifd"} <= on,
            "switchover-ack" in on and "return-path" not in on,
            "dirty-limit" in on,  # no KVM dirty ring on the default host
            {"multifd", "xbzrle"} <= on,
            {"compress", "xbzrle"} <= on,
            "mapped-ram" in on and bool(on & {"xbzrle", "postcopy-ram"}),
        ]
    return not any(bad)


def calls(profile_key: str) -> st.SearchStrategy[list[list[dict[str, object]]]]:
    names = list(capability_names(PROFILES[profile_key]))
    entry = st.fixed_dictionaries({"capability": st.sampled_from(names), "state": st.booleans()})
    return st.lists(st.lists(entry, max_size=6), max_size=12)


def run(profile_key: str, sequence: list[list[dict[str, object]]]) -> None:
    cfg = MigrationConfig(PROFILES[profile_key], HostInfo())
    names = capability_names(PROFILES[profile_key])
    for entries in sequence:
        before = cfg.capabilities
        merged = dict(before)
        for e in entries:
            merged[str(e["capability"])] = bool(e["state"])
        expected = acceptable(profile_key, {n for n, v in merged.items() if v})
        try:
            cfg.set_capabilities(entries)
        except CommandError as exc:
            assert not expected, exc.desc
            assert exc.error_class == "GenericError"
            assert cfg.capabilities == before
        else:
            assert expected
            assert cfg.capabilities == merged
        assert list(cfg.capabilities) == list(names)
        # a full list of false entries is always accepted, unstable/deprecated included
        probe = MigrationConfig(PROFILES[profile_key], HostInfo(), cfg.capabilities)
        probe.set_capabilities([{"capability": n, "state": False} for n in names])
        assert not any(probe.capabilities.values())


@settings(max_examples=150, deadline=None)
@given(calls("7.2"))
def test_sequences_72(sequence):
    run("7.2", sequence)


@settings(max_examples=150, deadline=None)
@given(calls("default"))
def test_sequences_default(sequence):
    run("default", sequence)


@settings(max_examples=150, deadline=None)
@given(calls("8.1"))
def test_sequences_81(sequence):
    run("8.1", sequence)


@settings(max_examples=150, deadline=None)
@given(calls("10.0"))
def test_sequences_100(sequence):
    run("10.0", sequence)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["7.2", "default", "8.1", "10.0"]), st.data())
def test_all_false_always_accepted_on_a_destination(profile_key, data):
    """Even on a started destination with a hostile host, all-false passes."""
    profile = PROFILES[profile_key]
    names = list(capability_names(profile))
    host = HostInfo(userfaultfd=False, uffd_wp=False, replication=False, linux=False,
                    live_block_migration=False)  # fmt: skip
    cfg = MigrationConfig(profile, HostInfo())
    cfg.note_incoming("exec:cat", started=True)
    ctx = cfg.caps_context(inmigrate=True)
    order = data.draw(st.permutations(names))
    cfg.host = host
    cfg.set_capabilities([{"capability": n, "state": False} for n in order], ctx)
    assert not any(cfg.capabilities.values())
