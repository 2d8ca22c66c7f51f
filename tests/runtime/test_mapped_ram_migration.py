"""``mapped-ram`` over ``file:`` between two real qmp-server processes (QEMU 10.0 profile).

What a user of libvirt's ``virsh save --parallel`` (or a script doing QEMU's save and restore
by hand) sees: the save completes with QEMU's counters, the file has a place for every page
(its apparent size is the guest's RAM and not what was sent, however often pages went
again), it is sparse, and the restore brings back exactly the saved guest, with or without
multifd channels, with the URI form or the ``channels`` form and an offset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from migration_rig import MiB, Rig
from qemu.qmp import ExecuteError

pytestmark = pytest.mark.asyncio

COMMON = ("--compat", "10.0", "-machine", "pc", "-m", "64")
#: The file QEMU 10.0 lays out for ``-M pc -m 64 -nodefaults`` (recorded): each block's
#: pages on a 1 MiB boundary, the last block (``/rom@etc/acpi/rsdp``) at 70 MiB.
PC64_LAST_PAGES = 70 * MiB


def _data_extents(path: Path) -> list[tuple[int, int]]:
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out


async def _save_and_restore(
    rig: Rig,
    target: Any,
    *,
    caps: dict[str, bool],
    src: tuple[str, ...] = (),
    common: tuple[str, ...] = COMMON,
    params: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Save to the file, restore from it; the source's final query-migrate and digest."""
    source = await rig.side(*common, "-nodefaults", *src)
    await source.caps(**caps)
    if params:
        await source.params(**params)
    await source.run("migrate", target)
    assert await source.wait_status("completed", "failed") == "completed", await source.run(
        "query-migrate"
    )
    info = await source.run("query-migrate")
    saved = await source.digest()
    dest = await rig.side(*common, "-nodefaults", "-incoming", "defer")
    await dest.caps(**caps)
    await dest.run("migrate-incoming", target)
    assert await dest.wait_status("completed", "failed") == "completed", await dest.run(
        "query-migrate"
    )
    assert await dest.digest() == saved
    assert await dest.status() == "running"
    assert dest.names() == ["setup", "active", "RESUME", "completed"]
    return info, saved


async def test_mapped_ram_file_has_a_place_for_every_page(rig: Rig, tmp_path: Path) -> None:
    image = tmp_path / "guest.sav"
    info, _ = await _save_and_restore(rig, {"uri": f"file:{image}"}, caps={"mapped-ram": True})
    ram = info["ram"]
    # QEMU's counters (recorded): no page header, a zero page costs nothing, one iteration's
    # EOS in precopy, the blocks' bitmaps (2,088 bytes for pc/64 MiB) at the switchover
    assert ram["multifd-bytes"] == 0
    assert ram["normal-bytes"] == ram["normal"] * 4096
    assert ram["precopy-bytes"] + ram["downtime-bytes"] == ram["normal"] * 4096 + 8 + 2088
    assert ram["transferred"] - ram["precopy-bytes"] - ram["downtime-bytes"] == 112580
    extents = _data_extents(image)
    size = image.stat().st_size
    assert PC64_LAST_PAGES + 4096 < size < PC64_LAST_PAGES + 2 * MiB
    # the stream goes on where QEMU's does, right after each block's pages
    # (the next blocks' pages at 66, 67, 68, 69 and 70 MiB: 128, 256, 128, 4 and 4 KiB)
    kib = 1024
    for at in (0, 65 * MiB, 66 * MiB + 128 * kib, 67 * MiB + 256 * kib, 68 * MiB + 128 * kib,
               69 * MiB + 4 * kib, 70 * MiB + 4 * kib):  # fmt: skip
        assert any(s <= at < s + n for s, n in extents), (at, extents)
    assert any(s <= 1 * MiB < s + n for s, n in extents)  # pc.ram's first page
    # sparse: the idle guest's zero pages are holes
    assert os.stat(image).st_blocks * 512 < 8 * MiB


async def test_mapped_ram_multifd_channels_form_with_offset(rig: Rig, tmp_path: Path) -> None:
    image = tmp_path / "guest.sav"
    target = {
        "channels": [
            {
                "channel-type": "main",
                "addr": {"transport": "file", "filename": str(image), "offset": 4096},
            }
        ]
    }
    info, _ = await _save_and_restore(rig, target, caps={"mapped-ram": True, "multifd": True})
    ram = info["ram"]
    # the channels write the pages: multifd-bytes, and a main stream without them
    assert ram["multifd-bytes"] == ram["normal"] * 4096 > 0
    assert (ram["precopy-bytes"], ram["downtime-bytes"]) == (8, 2088)
    assert ram["transferred"] - ram["multifd-bytes"] == 114676
    # the offsets are the file's: pc.ram's pages still on the 1 MiB boundary
    assert any(s <= 1 * MiB < s + n for s, n in _data_extents(image))
    with image.open("rb") as f:
        assert f.read(4096) == bytes(4096)  # nothing before the offset


async def test_pages_sent_again_go_to_the_same_place(rig: Rig, tmp_path: Path) -> None:
    # a guest that writes while a rate-limited save runs: pages go several times, the file
    # stays the size of the guest, and the restore is exactly the guest at the switchover
    image = tmp_path / "guest.sav"
    common = ("--compat", "10.0", "-machine", "pc", "-m", "256")
    info, _ = await _save_and_restore(
        rig,
        {"uri": f"file:{image}"},
        caps={"mapped-ram": True, "multifd": True},
        common=common,
        src=("--guest-fill", "random", "--dirty-rate", "30M"),
        params={"max-bandwidth": 400 * MiB, "multifd-channels": 3},
    )
    ram = info["ram"]
    assert ram["dirty-sync-count"] >= 3
    assert ram["multifd-bytes"] > 256 * MiB  # more than the guest: pages went again
    assert image.stat().st_size < 256 * MiB + 8 * MiB


async def test_a_damaged_page_in_the_file_fails_the_restore(rig: Rig, tmp_path: Path) -> None:
    image = tmp_path / "guest.sav"
    common = ("--compat", "10.0", "-machine", "pc", "-m", "64", "-nodefaults")
    source = await rig.side(*common, "--guest-fill", "random")
    await source.caps(**{"mapped-ram": True})
    await source.run("migrate", {"uri": f"file:{image}"})
    assert await source.wait_status("completed", "failed") == "completed"
    with image.open("r+b") as f:  # one bit of a page in pc.ram's region
        f.seek(1 * MiB + 123 * 4096 + 7)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    dest = await rig.side(*common, "--guest-fill", "random", "-incoming", "defer")
    await dest.caps(**{"mapped-ram": True})
    await dest.run("migrate-incoming", {"uri": f"file:{image}"})
    assert dest.server.proc.wait(30) == 1  # QEMU's destination exits when the load fails


async def test_direct_io_with_multifd_and_an_odd_offset(rig: Rig, tmp_path: Path) -> None:
    # direct-io: the channels write and read the pages with O_DIRECT, from aligned buffers;
    # the pages are aligned in the file whatever the stream's offset (QEMU takes 4097)
    image = tmp_path / "guest.sav"
    caps = {"mapped-ram": True, "multifd": True}
    common = ("--compat", "10.0", "-machine", "pc", "-m", "128")
    source = await rig.side(*common, "--guest-fill", "random")
    await source.caps(**caps)
    await source.params(**{"direct-io": True, "multifd-channels": 3})
    await source.run("migrate", {"uri": f"file:{image},offset=4097"})
    assert await source.wait_status("completed", "failed") == "completed", (
        await source.run("query-migrate")
    )
    saved = await source.digest()
    dest = await rig.side(*common, "--guest-fill", "random", "-incoming", "defer")
    await dest.caps(**caps)
    await dest.params(**{"direct-io": True})
    await dest.run("migrate-incoming", {"uri": f"file:{image},offset=4097"})
    assert await dest.wait_status("completed", "failed") == "completed"
    assert await dest.digest() == saved


async def test_a_file_passed_with_getfd_is_seekable_a_pipe_is_not(
    rig: Rig, tmp_path: Path
) -> None:
    # libvirt saves through a descriptor: mapped-ram takes it when it is a regular file
    image = tmp_path / "guest.sav"
    source = await rig.side(*COMMON, "-nodefaults", "--guest-fill", "random")
    await source.caps(**{"mapped-ram": True})
    read_end, write_end = os.pipe()
    try:
        source.qmp.send_fd_scm(write_end)
        await source.run("getfd", {"fdname": "pipe"})
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(ExecuteError, match="requires seekable transport"):
        await source.run("migrate", {"uri": "fd:pipe"})
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        source.qmp.send_fd_scm(fd)
        await source.run("getfd", {"fdname": "save"})
    finally:
        os.close(fd)
    await source.run("migrate", {"uri": "fd:save"})
    assert await source.wait_status("completed", "failed") == "completed"
    saved = await source.digest()
    dest = await rig.side(*COMMON, "-nodefaults", "--guest-fill", "random", "-incoming", "defer")
    await dest.caps(**{"mapped-ram": True})
    await dest.run("migrate-incoming", {"uri": f"file:{image}"})
    assert await dest.wait_status("completed", "failed") == "completed"
    assert await dest.digest() == saved
