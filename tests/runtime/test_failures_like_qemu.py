"""Two failures compared with QEMU 7.2 and 10.0 (recorded live, docs/guest-layout.md):

* ``migrate exec:true`` -- a command that exits at once: setup, PASS 1, active, failed, with
  7.2's write error or 10.0's "ram_save_setup failed" (10.0 checks the setup's flush);
* a destination whose load fails with ``exit-on-error`` (the default) announces ``failed`` and
  is gone: no command is answered after it.
"""

from __future__ import annotations

import asyncio

import pytest
from migration_rig import Rig, exit_code

MACHINE = ("-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none")


@pytest.mark.parametrize(
    ("compat", "desc"),
    [
        ("7.2", "Unable to write to command: Broken pipe"),
        ("default", "Unable to write to command: Broken pipe"),
        ("10.0", "ram_save_setup failed: Input/output error"),
    ],
)
async def test_exec_command_that_exits_at_once(rig: Rig, compat: str, desc: str) -> None:
    profile = () if compat == "default" else ("--compat", compat)
    source = await rig.side(*profile, *MACHINE)
    source.mark()
    await source.run("migrate", {"uri": "exec:true"})
    assert await source.wait_status("completed", "failed") == "failed"
    assert await source.run("query-migrate") == {"status": "failed", "error-desc": desc}
    assert source.names() == ["setup", "PASS 1", "active", "failed"]
    assert await source.status() == "running"  # the guest never stopped
    stderr = source.server.stop()[1].decode()
    assert desc in stderr


async def test_a_failed_destination_answers_nothing_after_failed(rig: Rig) -> None:
    source, dest, uri = await rig.pair(*MACHINE, uri=rig.unix_uri())
    await source.params(max_bandwidth=100_000)  # ~7 s: the source dies in the middle
    await source.run("migrate", {"uri": uri})
    await dest.wait_status("active")
    source.server.proc.kill()

    async def failed_seen() -> None:  # the failed event still reaches the client...
        while True:
            if any(e["event"] == "MIGRATION" and e["data"]["status"] == "failed"
                   for e in dest.events):  # fmt: skip
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(failed_seen(), 30)
    # ... and from then on nothing is answered: the process exits (QEMU's exit(1))
    with pytest.raises(Exception):  # noqa: B017 - a disconnect, whichever class
        await asyncio.wait_for(dest.run("query-migrate"), 10)
    assert exit_code(dest.server) == 1


@pytest.mark.parametrize(("compat", "waiting"), [("7.2", "active"), ("10.0", "device")])
@pytest.mark.parametrize("cap", ["return_path", "postcopy_ram"])
async def test_a_return_path_over_exec_never_comes(
    rig: Rig, compat: str, waiting: str, cap: str
) -> None:
    """QEMU 7.2 and 10.0 (live, ad hoc): with ``return-path`` or ``postcopy-ram`` on, a
    migration to ``exec:`` sends everything, then waits for a return path the transport cannot
    carry -- the guest stopped, ``active`` (7.2) or ``device`` (10.0) -- and migrate_cancel
    leaves it ``cancelling``."""
    source = await rig.side("--compat", compat, *MACHINE)
    await source.caps(**{cap: True})
    await source.run("migrate", {"uri": "exec:cat > /dev/null"})
    await source.wait_query(lambda q: q.get("ram", {}).get("remaining") == 0 and
                            q["status"] == waiting)  # fmt: skip
    await asyncio.sleep(0.5)
    assert (await source.run("query-migrate"))["status"] == waiting
    assert await source.status() == "finish-migrate"
    await source.run("migrate_cancel")
    await asyncio.sleep(0.3)
    assert (await source.run("query-migrate"))["status"] == "cancelling"
    assert await source.status() == "finish-migrate"
