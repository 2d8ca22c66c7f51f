"""Multifd between two real processes: the pages cross on ``multifd-channels`` connections
(each with its own writer and receiver thread), and the destination ends with the source's
RAM whatever order the channels delivered a re-sent page in."""

from __future__ import annotations

import pytest
from migration_rig import MiB, Rig


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("fill", ["random", "idle"])
async def test_multifd_migrates_a_dirtying_guest(rig: Rig, version: str, fill: str) -> None:
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "128", "-nodefaults",
        "--guest-fill", fill,
        src=("--dirty-rate", "8M"), caps={"multifd": True}, uri=rig.unix_uri(),
    )  # fmt: skip
    await source.params(max_bandwidth=64 * MiB)
    await dest.params(multifd_channels=2)
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", within=60) == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    assert (await dest.digest())["ram"] == (await source.digest())["ram"]


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("method", ["zlib", "zstd"])
async def test_multifd_compression(rig: Rig, version: str, method: str) -> None:
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "64", "-nodefaults", "--guest-fill", "text",
        src=("--dirty-rate", "2M"), caps={"multifd": True}, uri=rig.unix_uri(),
    )  # fmt: skip
    for side in (source, dest):
        await side.params(multifd_compression=method, multifd_channels=3)
    await source.params(max_bandwidth=64 * MiB)
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", within=60) == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    assert (await dest.digest())["ram"] == (await source.digest())["ram"]


async def test_legacy_compress_on_7_2(rig: Rig) -> None:
    source, dest, uri = await rig.pair(
        "--compat", "7.2", "-machine", "pc", "-m", "64", "-nodefaults", "--guest-fill", "text",
        # small writes keep re-sent pages text-like (whole random pages would not compress,
        # and how many are re-sent depends on the machine's load)
        src=("--dirty-rate", "1M", "--dirty-write-bytes", "64"), caps={"compress": True},
        uri=rig.unix_uri(),
    )  # fmt: skip
    await source.params(max_bandwidth=64 * MiB, compress_threads=2)
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", within=60) == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    info = await source.run("query-migrate")
    stats = info["compression"]
    assert set(stats) == {"pages", "busy", "busy-rate", "compressed-size", "compression-rate"}
    assert stats["pages"] > 16000 and 0 < stats["compressed-size"] < stats["pages"] * 4096 // 2
    # text compresses to ~45% per page: the stream is well under the pages' raw size (how many
    # pages are sent again depends on how long the run took, i.e. on the machine's load)
    sent = (stats["pages"] + info["ram"]["normal"]) * 4096
    assert info["ram"]["transferred"] < 0.6 * sent, (info["ram"], stats)
    assert (await dest.digest())["ram"] == (await source.digest())["ram"]


@pytest.mark.parametrize("version", ["7.2", "10.0"])
async def test_zero_copy_send_over_tcp_sends_from_memory_the_kernel_copies(
    rig: Rig, version: str
) -> None:
    # over loopback the kernel copies what MSG_ZEROCOPY hands it: QEMU counts a miss per
    # channel flush that had sent pages (docs/multifd-facts.md); QEMU's own command line
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "64", "-nodefaults",
        caps={"multifd": True}, dst_caps={"multifd": True},
    )  # fmt: skip
    await source.caps(**{"zero-copy-send": True})
    await source.params(max_bandwidth=64 * MiB)
    await source.run("migrate", {"uri": uri})
    status = await source.wait_status("completed", "failed", within=60)
    assert status == "completed", await source.run("query-migrate")
    assert await dest.wait_status("completed", "failed") == "completed"
    ram = (await source.run("query-migrate"))["ram"]
    assert ram["dirty-sync-missed-zero-copy"] >= 1
    assert ram["normal"] > 100  # the idle guest's firmware pages went with MSG_ZEROCOPY
    assert (await dest.digest())["ram"] == (await source.digest())["ram"]


async def test_zero_copy_send_over_a_unix_socket_fails_in_setup(rig: Rig) -> None:
    source, _dest, uri = await rig.pair(
        "--compat", "10.0", "-machine", "pc", "-m", "64", "-nodefaults",
        caps={"multifd": True}, uri=rig.unix_uri(),
    )  # fmt: skip
    await source.caps(**{"zero-copy-send": True})
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", within=30) == "failed"
    info = await source.run("query-migrate")
    assert info["error-desc"] == "Zero copy send feature not detected in host kernel"
