"""libvirt 9.0's multifd against qmp-server: ``virsh migrate --parallel`` between two hosts.

libvirt turns ``multifd`` on at both ends and sets ``multifd-channels`` to
``--parallel-connections`` before the destination listens; the pages then cross on that many
extra connections (qmp-server's destination loads them in parallel), and the domain ends
running on the destination with the source's RAM.
"""

from __future__ import annotations

import pytest
from test_virsh_postcopy import Pair, _qmp, busy_guest  # noqa: F401  (the fixture)


@pytest.mark.parametrize("busy_guest", ["7.2", "10.0"], indirect=True)
def test_parallel_migration(libvirt_pair: Pair, busy_guest: str) -> None:  # noqa: F811
    source, dest, address = libvirt_pair
    name = busy_guest
    _qmp(source, name, "x-set-dirty-rate", rate=4_000_000)  # converges at 64 MiB/s
    source.virsh("migrate", "--live", "--parallel", "--parallel-connections", "3",
                 name, dest.uri, "--migrateuri", f"tcp://{address}")  # fmt: skip
    # 3 channels: a destination still at the default of 2 would have refused channel id 2
    assert dest.virsh("domstate", "--reason", name).stdout.strip() == "running (migrated)"
    assert source.virsh("domstate", "--reason", name).stdout.strip() == "shut off (migrated)"
