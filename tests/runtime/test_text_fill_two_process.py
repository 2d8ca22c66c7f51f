"""The ``text`` guest fill between two real processes: the destination rebuilds the text
baseline from the stream HEADER (fill code 3) and ends with the source's RAM, also with
pages the guest rewrote during the migration."""

from __future__ import annotations

import pytest
from migration_rig import MiB, Rig


@pytest.mark.parametrize("version", ["7.2", "10.0"])
async def test_a_text_guest_migrates_with_equal_digests(rig: Rig, version: str) -> None:
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "64", "-nodefaults",
        src=("--guest-fill", "text", "--dirty-rate", "4M"), uri=rig.unix_uri(),
    )  # fmt: skip
    await source.params(max_bandwidth=64 * MiB)
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", within=60) == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    src_digest, dst_digest = await source.digest(), await dest.digest()
    assert dst_digest["ram"] == src_digest["ram"]
