"""-global migration.* properties: value parsing, errors and the start-up check.

Every expected text below was produced by QEMU 7.2.22 (``qemu-system-x86_64 -machine none
-global migration.X=Y``) unless marked otherwise.
"""

from __future__ import annotations

import pytest

from qmp_server.engine.host import HostInfo
from qmp_server.engine.properties import (
    SIZE_HINT,
    apply_globals,
    parse_size,
    property_specs,
)
from qmp_server.errors import UsageError
from qmp_server.profiles import PROFILES

P72, PDEF, P81, P100 = (PROFILES[k] for k in ("7.2", "default", "8.1", "10.0"))
HOST = HostInfo()

# qom-list-properties typename=migration on 7.2, minus the generic device properties
LIVE_72_PROPS = {
    "x-block", "x-return-path", "x-compress", "x-release-ram",
    "x-postcopy-preempt-break-huge", "x-postcopy-preempt", "x-auto-converge",
    "x-postcopy-ram", "x-compress-threads", "announce-step", "multifd-zlib-level",
    "x-max-bandwidth", "send-section-footer", "multifd-channels", "send-configuration",
    "x-compress-level", "announce-rounds", "x-compress-wait-thread", "tls-creds",
    "multifd-compression", "x-cpu-throttle-initial", "tls-hostname", "x-colo", "x-events",
    "x-multifd", "multifd-zstd-level", "tls-authz", "x-xbzrle", "decompress-error-check",
    "x-checkpoint-delay", "x-cpu-throttle-increment", "x-throttle-trigger-threshold",
    "x-clear-bitmap-shift", "announce-initial", "x-rdma-pin-all", "x-decompress-threads",
    "max-postcopy-bandwidth", "x-downtime-limit", "x-zero-copy-send", "store-global-state",
    "x-background-snapshot", "announce-max", "x-cpu-throttle-tailslow", "xbzrle-cache-size",
    "x-zero-blocks", "max-cpu-throttle",
}  # fmt: skip


def test_property_sets():
    assert {p.name for p in property_specs(P72)} == LIVE_72_PROPS
    assert {p.name for p in property_specs(PDEF)} == LIVE_72_PROPS | {"x-precopy-initial-data"}
    names81 = {p.name for p in property_specs(P81)}
    assert {"x-switchover-ack", "x-dirty-limit", "x-vcpu-dirty-limit-period",
            "vcpu-dirty-limit", "x-preempt-pre-7-2"} <= names81  # fmt: skip
    assert "x-postcopy-preempt-break-huge" not in names81
    names100 = {p.name for p in property_specs(P100)}
    assert {"mapped-ram", "mode", "zero-page-detection", "avail-switchover-bandwidth"} <= names100
    assert not {"x-compress", "x-block", "x-compress-level"} & names100
    assert "x-zero-copy-send" not in {p.name for p in property_specs(P72, HostInfo(linux=False))}


def start(profile=P72, *pairs, incoming=None, host=HOST):
    return apply_globals(
        profile, host, [("migration", *p.split("=", 1)) for p in pairs], incoming=incoming
    )


def fails(profile, *pairs, **kw):
    with pytest.raises(UsageError) as info:
        start(profile, *pairs, **kw)
    return str(info.value)


@pytest.mark.parametrize(
    ("word", "value"),
    [("on", True), ("yes", True), ("true", True), ("y", True),
     ("off", False), ("no", False), ("false", False), ("n", False)],
)  # fmt: skip
def test_bool_words(word, value):
    assert start(P72, f"x-return-path={word}").capabilities["return-path"] is value


@pytest.mark.parametrize("word", ["abc", "ON", "On", "1", "0", "", "TRUE"])
def test_bool_rejected(word):
    assert fails(P72, f"x-return-path={word}") == (
        f"can't apply global migration.x-return-path={word}: "
        "Parameter 'x-return-path' expects 'on' or 'off'"
    )


def test_last_global_wins():
    assert start(P72, "x-return-path=on", "x-return-path=off").capabilities["return-path"] is False
    assert start(P72, "x-return-path=off", "x-return-path=on").capabilities["return-path"] is True


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x5", 5), ("010", 8), ("+3", 3), ("-0", 0)],
)
def test_uint8_values(text, value):
    assert start(P72, f"x-compress-level={text}").parameters["compress-level"] == value


@pytest.mark.parametrize(
    ("pair", "tail"),
    [
        ("x-compress-level=256", "Parameter 'x-compress-level' expects uint8_t"),
        ("x-compress-level=-1", "Parameter 'x-compress-level' expects uint8_t"),
        ("x-compress-level=abc", "Parameter 'x-compress-level' expects uint64"),
        ("x-compress-level=3.0", "Parameter 'x-compress-level' expects uint64"),
        ("x-compress-level=1k", "Parameter 'x-compress-level' expects uint64"),
        ("x-compress-level=", "Parameter 'x-compress-level' expects uint64"),
        ("x-downtime-limit=18446744073709551616", "Parameter 'x-downtime-limit' expects uint64"),
        ("x-downtime-limit=1k", "Parameter 'x-downtime-limit' expects uint64"),
        ("x-checkpoint-delay=4294967296", "Parameter 'x-checkpoint-delay' expects uint32_t"),
        ("x-checkpoint-delay=-1", "Parameter 'x-checkpoint-delay' expects uint32_t"),
        ("x-checkpoint-delay=abc", "Parameter 'x-checkpoint-delay' expects uint64"),
        (
            "multifd-compression=bogus",
            "Parameter 'multifd-compression' does not accept value 'bogus'",
        ),
        (
            "multifd-compression=ZLIB",
            "Parameter 'multifd-compression' does not accept value 'ZLIB'",
        ),
        ("x-max-bandwidth=16E", "Value '16E' is out of range for parameter 'x-max-bandwidth'"),
        (
            "x-max-bandwidth=18446744073709551616",
            "Value '18446744073709551616' is out of range for parameter 'x-max-bandwidth'",
        ),
    ],
)
def test_value_errors(pair, tail):
    assert fails(P72, pair) == f"can't apply global migration.{pair}: {tail}"


@pytest.mark.parametrize(
    "text",
    ["abc", "-1", "1kB", "1KiB", "1e3", "", "1.5", "0x1.8k", "1.5b", ".5k", "0.1b", "1kk", "0x"],
)
def test_size_errors(text):
    assert fails(P72, f"x-max-bandwidth={text}") == (
        f"can't apply global migration.x-max-bandwidth={text}: "
        "Parameter 'x-max-bandwidth' expects a non-negative number below 2^64\n" + SIZE_HINT
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1k", 1024), ("1K", 1024), ("1.5M", 1572864), ("2G", 2147483648), ("1b", 1),
        ("1B", 1), ("1T", 1 << 40), ("1P", 1 << 50), ("1E", 1 << 60), ("0x10", 16),
        ("0.5k", 512), ("1.k", 1024), ("1.0", 1), ("0x10k", 16384), ("0x1E", 30),
        ("0x1B", 27), ("010", 10), ("010k", 10240), ("+5", 5),
        ("18446744073709551615", 2**64 - 1), ("15.999E", 18445591152204944768),
        ("15.9999999999999999999E", 17293822569102704640), ("1.9999999999999999999", 1),
        ("1.123456789k", 1150), ("1m", 1 << 20), ("1g", 1 << 30), ("1t", 1 << 40),
        ("1e", 1 << 60), ("1p", 1 << 50), ("9007199254740993", 9007199254740993),
        ("1.1k", 1126), ("0.001k", 1),
    ],
)  # fmt: skip
def test_size_values(text, value):
    assert parse_size(text) == value
    assert start(P72, f"x-max-bandwidth={text}").parameters["max-bandwidth"] == value


def test_not_found_and_other_drivers():
    assert fails(P72, "bogus=1") == (
        "can't apply global migration.bogus=1: Property 'migration.bogus' not found"
    )
    assert fails(P72, "X-RETURN-PATH=on").endswith("Property 'migration.X-RETURN-PATH' not found")
    assert fails(P72, "x-switchover-ack=on") == (
        "can't apply global migration.x-switchover-ack=on: "
        "Property 'migration.x-switchover-ack' not found"
    )
    assert fails(P72, "x-preempt-pre-7-2=on").endswith("not found")  # 7.2.22 lacks it
    assert fails(P100, "x-precopy-initial-data=on").endswith(
        "Property 'migration.x-precopy-initial-data' not found"
    )  # 10.0 live
    res = apply_globals(P72, HOST, [("foo", "bar", "1"), ("Migration", "x-return-path", "on")])
    assert res.warnings == [
        "global foo.bar has invalid class name",
        "global Migration.x-return-path has invalid class name",
    ]
    assert res.capabilities["return-path"] is False


def test_first_bad_global_wins_in_order():
    assert fails(P72, "x-return-path=abc", "bogus=1").startswith(
        "can't apply global migration.x-return-path=abc"
    )
    assert fails(P72, "bogus=1", "x-return-path=abc").startswith(
        "can't apply global migration.bogus=1"
    )


def test_startup_check():
    assert fails(P72, "x-postcopy-preempt=on") == "Postcopy preempt requires postcopy-ram"
    text = "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
    assert fails(P72, "x-downtime-limit=3000000") == text
    assert fails(P72, "x-downtime-limit=-1") == text
    # parameters are checked before capabilities, whatever the order on the command line
    assert fails(P72, "x-postcopy-preempt=on", "x-downtime-limit=3000000") == text
    assert fails(P72, "x-compress-level=10") == (
        "Parameter 'compress_level' expects a value between 0 and 9"
    )
    # the -global multifd levels are checked (unlike migrate-set-parameters in 7.2)
    assert fails(P72, "multifd-zlib-level=10") == (
        "Parameter 'multifd_zlib_level' expects a value between 0 and 9"
    )
    assert start(P72, "multifd-zlib-level=5").parameters["multifd-zlib-level"] == 5
    zc = "Zero copy only available for non-compressed non-TLS multifd migration"
    assert fails(P72, "x-zero-copy-send=on") == zc
    assert fails(P72, "tls-creds=foo", "x-zero-copy-send=on", "x-multifd=on") == zc
    assert fails(P72, "x-zero-copy-send=on", "x-multifd=on", "multifd-compression=zlib") == zc
    assert start(P72, "x-zero-copy-send=on", "x-multifd=on").capabilities["zero-copy-send"]
    assert start(P72, "x-clear-bitmap-shift=100").others["x-clear-bitmap-shift"] == 100
    assert start(P72, "store-global-state=off").others["store-global-state"] is False


def test_startup_postcopy_destination():
    host = HostInfo(userfaultfd=False)
    assert start(P72, "x-postcopy-ram=on", host=host).capabilities["postcopy-ram"]
    assert fails(P72, "x-postcopy-ram=on", host=host, incoming="defer") == (
        "Postcopy is not supported"
    )  # live as an unprivileged user


def test_startup_switchover_ack():
    ack = "Capability 'switchover-ack' requires capability 'return-path'"
    assert fails(P81, "x-switchover-ack=on") == ack
    assert fails(P100, "x-switchover-ack=on") == ack  # 10.0 live
    assert fails(P100, "x-switchover-ack=bogus") == (
        "can't apply global migration.x-switchover-ack=bogus: "
        "Parameter 'x-switchover-ack' expects 'on' or 'off'"
    )
    assert fails(P100, "switchover-ack=on").endswith(
        "Property 'migration.switchover-ack' not found"
    )
    caps = start(P100, "x-switchover-ack=on", "x-return-path=on").capabilities
    assert caps["switchover-ack"] and caps["return-path"]
    assert fails(PDEF, "x-precopy-initial-data=on") == (
        "Capability 'precopy-initial-data' requires capability 'return-path'"
    )
    assert start(PDEF, "x-precopy-initial-data=on", "x-return-path=on").capabilities[
        "precopy-initial-data"
    ]
