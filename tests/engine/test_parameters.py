"""Parameter table, defaults, query view and migrate_params_check texts/order per profile."""

from __future__ import annotations

import pytest

from qmp_server.engine.parameters import (
    check_bitmap_mapping,
    check_parameters,
    default_parameters,
    parameter_specs,
    query_view,
)
from qmp_server.profiles import PROFILES

P72, PDEF, P81, P100 = (PROFILES[k] for k in ("7.2", "default", "8.1", "10.0"))
ALL = [P72, PDEF, P81, P100]

# live 7.2 query-migrate-parameters with defaults (key order there is hash order)
LIVE_72 = {
    "cpu-throttle-tailslow": False, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20,
    "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1,
    "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50,
    "block-incremental": False, "compress-wait-thread": True, "downtime-limit": 300,
    "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100,
    "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99,
    "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
    "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10,
}  # fmt: skip

# observed on QEMU 10.0.13 (qemu-10.0.md)
LIVE_100 = {
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "avail-switchover-bandwidth": 0, "cpu-throttle-increment": 10, "cpu-throttle-initial": 20,
    "cpu-throttle-tailslow": False, "direct-io": False, "downtime-limit": 300,
    "max-bandwidth": 134217728, "max-cpu-throttle": 99, "max-postcopy-bandwidth": 0,
    "mode": "normal", "multifd-channels": 2, "multifd-compression": "none",
    "multifd-qatzip-level": 1, "multifd-zlib-level": 1, "multifd-zstd-level": 1,
    "throttle-trigger-threshold": 50, "tls-authz": "", "tls-creds": "", "tls-hostname": "",
    "vcpu-dirty-limit": 1, "x-checkpoint-delay": 20000, "x-vcpu-dirty-limit-period": 1000,
    "xbzrle-cache-size": 67108864, "zero-page-detection": "multifd",
}  # fmt: skip


def test_defaults():
    assert default_parameters(P72) == LIVE_72
    assert default_parameters(PDEF) == LIVE_72
    assert default_parameters(P81) == {
        **LIVE_72, "x-vcpu-dirty-limit-period": 1000, "vcpu-dirty-limit": 1,
    }  # fmt: skip
    assert default_parameters(P100) == LIVE_100


def test_query_order_is_schema_order_and_mapping_only_once_set():
    names = [s.name for s in parameter_specs(P72)]
    assert names[:5] == ["announce-initial", "announce-max", "announce-rounds",
                         "announce-step", "compress-level"]  # fmt: skip
    assert names[-1] == "block-bitmap-mapping"
    view = query_view(P72, default_parameters(P72))
    assert list(view) == names[:-1]
    assert (
        list(query_view(P72, {**default_parameters(P72), "block-bitmap-mapping": []}))[-1]
        == "block-bitmap-mapping"
    )
    names100 = [s.name for s in parameter_specs(P100)]
    assert names100[-3:] == ["mode", "zero-page-detection", "direct-io"]


def err(profile, caps=None, **request):
    req = {k.replace("_", "-"): v for k, v in request.items()}
    return check_parameters(profile, default_parameters(profile), req, caps)


# the 7.2 order, established live by sending all invalid values and removing the reported one
ORDER_72 = [
    ("compress_level", 10, "a value between 0 and 9"),
    ("compress_threads", 0, "a value between 1 and 255"),
    ("decompress_threads", 0, "a value between 1 and 255"),
    ("throttle_trigger_threshold", 0, "an integer in the range of 1 to 100"),
    ("cpu_throttle_initial", 0, "an integer in the range of 1 to 99"),
    ("cpu_throttle_increment", 0, "an integer in the range of 1 to 99"),
    ("downtime_limit", 2000001, "an integer in the range of 0 to (2000 * 1000) ms"),
    ("multifd_channels", 0, "a value between 1 and 255"),
    ("xbzrle_cache_size", 1000, "a power of two no less than the target page size"),
    ("max_cpu_throttle", 100, "an integer in the range of cpu_throttle_initial to 99"),
    ("announce_initial", 100001, "a value between 0 and 100000"),
    ("announce_max", 100001, "a value between 0 and 100000"),
    ("announce_rounds", 1001, "a value between 0 and 1000"),
    ("announce_step", 0, "a value between 0 and 10000"),
]


@pytest.mark.parametrize("profile", [P72, PDEF, P81], ids=lambda p: p.name)
def test_72_order_live(profile):
    bad = {name: value for name, value, _ in ORDER_72}
    bad.update(multifd_zlib_level=10, multifd_zstd_level=21)  # ignored by 7.2 (live)
    for name, _, text in ORDER_72:
        assert err(profile, **bad) == f"Parameter '{name}' expects {text}"
        del bad[name]
    assert err(profile, **bad) is None


def test_10_0_order_and_texts():
    assert err(P100, multifd_zlib_level=10) == (
        "Parameter 'multifd_zlib_level' expects a value between 0 and 9"
    )
    assert err(P100, multifd_zstd_level=21) == (
        "Parameter 'multifd_zstd_level' expects a value between 0 and 20"
    )
    assert err(P100, multifd_qatzip_level=10) == (
        "Parameter 'multifd_qatzip_level' expects a value between 1 and 9"
    )
    assert err(P100, multifd_qatzip_level=0) is not None
    assert err(P100, x_vcpu_dirty_limit_period=0) == (
        "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000"
    )
    assert err(P100, x_vcpu_dirty_limit_period=1001) is not None
    assert err(P100, vcpu_dirty_limit=0) == (
        "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"
    )
    assert err(P100, vcpu_dirty_limit=1) is None
    assert err(P100, avail_switchover_bandwidth=2**64 - 1) is None
    assert err(P100, multifd_zlib_level=10, multifd_channels=0) == (
        "Parameter 'multifd_channels' expects a value between 1 and 255"
    )


def test_81_texts():
    assert err(P81, vcpu_dirty_limit=0) == (
        "Parameter 'vcpu_dirty_limit' expects is invalid, it must greater then 1 MB/s"
    )
    assert err(P81, x_vcpu_dirty_limit_period=5000, vcpu_dirty_limit=0) == (
        "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000"
    )


def test_boundaries():
    assert err(P72, downtime_limit=2000000) is None
    assert err(P72, downtime_limit=2**64 - 1) is not None
    assert err(P72, xbzrle_cache_size=4096) is None
    assert err(P72, xbzrle_cache_size=2048) is not None
    assert err(P72, xbzrle_cache_size=4096 * 3) is not None
    # max-cpu-throttle is checked against the merged cpu-throttle-initial
    assert err(P72, cpu_throttle_initial=50, max_cpu_throttle=40) is not None
    assert err(P72, cpu_throttle_initial=30, max_cpu_throttle=30) is None
    assert err(P72, announce_step=10000) is None


def test_tls_null_and_zero_copy():
    zc = {"zero-copy-send": True, "multifd": True}
    text = "Zero copy only available for non-compressed non-TLS multifd migration"
    assert err(P72, zc, tls_creds="x") == text  # live
    assert err(P72, zc, multifd_compression="zlib") == text  # live
    assert err(P72, zc, tls_creds=None, tls_hostname=None, tls_authz=None) is None  # live
    assert err(P72, zc, tls_creds="x", announce_step=0) == (
        "Parameter 'announce_step' expects a value between 0 and 10000"
    )  # live: range checks first
    assert err(P72, tls_creds="x") is None


def test_mapped_ram_uses_stored_values():
    current = {**default_parameters(P100), "tls-creds": "x"}
    caps = {"mapped-ram": True}
    assert check_parameters(P100, current, {"downtime-limit": 5}, caps) == (
        "Mapped-ram only available for non-compressed non-TLS multifd migration"
    )
    assert check_parameters(P100, default_parameters(P100), {"tls-creds": "x"}, caps) is None


def n(node, alias, *bitmaps):
    return {"node-name": node, "alias": alias,
            "bitmaps": [{"name": a, "alias": b} for a, b in bitmaps]}  # fmt: skip


@pytest.mark.parametrize(
    ("mapping", "text"),
    [
        ([n("a", "x"), n("a", "y")], "The node name 'a' is mapped twice"),
        ([n("a", "x"), n("b", "x")], "The node alias 'x' is used twice"),
        ([n("a", "x" * 256)], "The node alias '" + "x" * 256 + "' is longer than 255 bytes"),
        ([n("a", "x" * 255)], None),
        ([n("a", "x", ("m", "p"), ("m", "q"))], "The bitmap 'a'/'m' is mapped twice"),
        ([n("a", "x", ("m", "p"), ("k", "p"))], "The bitmap alias 'x'/'p' is used twice"),
        (
            [n("a", "x", ("m", "p" * 256))],
            "The bitmap alias '" + "p" * 256 + "' is longer than 255 bytes",
        ),
        ([n("a", "")], "The node alias '' is not well-formed"),
        ([n("", "x")], None),
        ([n("a", "1x")], "The node alias '1x' is not well-formed"),
        ([n("a", "1" * 256)], "The node alias '" + "1" * 256 + "' is not well-formed"),
        ([n("a", "x", ("m", "1 2"))], None),
        ([n("a", "x"), n("b", "x"), n("b", "y")], "The node name 'b' is mapped twice"),
        (
            [n("a", "x", ("m", "p"), ("k", "p")), n("b", "x")],
            "The bitmap alias 'x'/'p' is used twice",
        ),
        (
            [n("a", "x", ("m", "p")), n("a", "y", ("m", "p" * 300))],
            "The node name 'a' is mapped twice",
        ),
    ],
)  # all live on 7.2
def test_bitmap_mapping(mapping, text):
    assert check_bitmap_mapping(mapping) == text
    full = err(P72, block_bitmap_mapping=mapping)
    assert full == (
        None if text is None else f"Invalid mapping given for block-bitmap-mapping: {text}"
    )
