"""Proxmox VE's way to migrate: poll ``query-migrate`` and raise the downtime when stuck.

Run it as is (it starts a source whose guest dirties memory faster than the bandwidth allows,
and a destination), or point it at your own monitors::

    python examples/proxmox_polling.py
    python examples/proxmox_polling.py --source /run/src.sock --dest /run/dst.sock \\
        --uri tcp:127.0.0.1:4449 --interval 1

What Proxmox's qemu-server does, summarised in docs/user-guide.md ("How libvirt and Proxmox
drive a migration"), here with qemu.qmp:

* every capability ``query-migrate-capabilities`` lists is set, ``auto-converge`` and
  ``xbzrle`` true, all others false (Proxmox does not know switchover-ack: it stays off);
* ``max-bandwidth`` (bytes/s), ``downtime-limit`` (ms) and ``xbzrle-cache-size`` (10 % of
  RAM, rounded down to a power of two) are set, then ``migrate-incoming`` and ``migrate``;
* no events: ``query-migrate`` is polled (Proxmox: every second, faster near the end), and a
  log line like Proxmox's is printed per poll;
* **auto-downtime**: when ``ram.remaining`` grows, or reads 0, more than 5 times, the
  downtime limit is doubled with ``migrate-set-parameters`` while the migration runs;
* only ``setup``/``cancelling``/``wait-unplug`` (waiting) and ``active``/``device``/
  ``completed``/``failed``/``cancelled`` are understood: any other status aborts, as in
  Proxmox (so ``pause-before-switchover`` cannot be used with it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from typing import Any

from _launch import start_qmp_server
from qemu.qmp import QMPClient

WAITING = ("setup", "cancelling", "wait-unplug")
UNDERSTOOD = ("active", "device", "completed", "failed", "cancelled")


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


async def migrate(args: argparse.Namespace) -> int:
    src, dst = QMPClient("source"), QMPClient("destination")
    await src.connect(args.source)
    await dst.connect(args.dest)
    for qmp in (src, dst):
        caps: Any = await qmp.execute("query-migrate-capabilities")
        wanted = {"auto-converge", "xbzrle"}
        states = [{"capability": c["capability"], "state": c["capability"] in wanted}
                  for c in caps]  # fmt: skip
        await qmp.execute("migrate-set-capabilities", {"capabilities": states})
    # Proxmox knows the RAM size from the VM's configuration (qmp-server: -m).
    cache = 1 << ((args.memory_mib * (1 << 20) // 10).bit_length() - 1)
    downtime = args.downtime
    await src.execute(
        "migrate-set-parameters",
        {"max-bandwidth": args.bandwidth, "downtime-limit": downtime, "xbzrle-cache-size": cache},
    )
    await dst.execute("migrate-incoming", {"uri": args.uri})
    await src.execute("migrate", {"uri": args.uri})
    started = time.monotonic()
    last_remaining: int | None = None
    stalls = 0
    interval = args.interval
    code = 1
    while True:
        await asyncio.sleep(interval)
        info: Any = await src.execute("query-migrate")
        status = info.get("status", "")
        if status in WAITING:
            continue
        if status not in UNDERSTOOD:
            print(f"unable to parse migration status '{status}' - aborting")
            await src.execute("migrate_cancel")
            break
        if status == "completed":
            elapsed = max(time.monotonic() - started, 1e-3)
            speed = info["ram"]["transferred"] / elapsed
            print(f"average migration speed: {mib(speed)}/s - downtime {info['downtime']} ms")
            code = 0
            break
        if status in ("failed", "cancelled"):
            print(f"aborting phase 2 - migration {status}: {info.get('error-desc', '')}")
            break
        ram = info["ram"]
        remaining = int(ram["remaining"])
        line = (f"migration {status}, transferred {mib(ram['transferred'])} of "
                f"{mib(ram['total'])} VM-state, {mib(ram['mbps'] * 1e6 / 8)}/s")  # fmt: skip
        if info.get("vfio"):
            line += f" (+ {mib(info['vfio']['transferred'])} VFIO-state)"
        dirty = ram.get("dirty-pages-rate", 0) * ram.get("page-size", 4096)
        if dirty > ram["mbps"] * 1e6 / 8:
            line += f", VM dirties lots of memory: {mib(dirty)}/s"
        print(line)
        # Near the end, poll faster (Proxmox goes from 1 s to 100 ms).
        if remaining < ram["mbps"] * 1e6 / 8 * interval:
            interval = min(interval, 0.1)
        if last_remaining is not None and (remaining > last_remaining or remaining == 0):
            stalls += 1
        last_remaining = remaining
        if stalls > 5:
            stalls = 0
            downtime = min(downtime * 2, 2000 * 1000)
            await src.execute("migrate-set-parameters", {"downtime-limit": downtime})
            print(f"auto-increased downtime to continue migration: {downtime} ms")
    await src.disconnect()
    await dst.disconnect()
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="source monitor (default: start one)")
    parser.add_argument("--dest", help="destination monitor, -incoming defer (default: start one)")
    parser.add_argument("--uri", help="migration URI (default: a unix socket)")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.2,
        help="seconds between polls (Proxmox: 1; default 0.2 to be quick)",
    )
    parser.add_argument("--bandwidth", type=int, default=16 << 20, help="bytes/s (default 16M)")
    parser.add_argument("--downtime", type=int, default=100, help="initial ms (default 100)")
    parser.add_argument("--memory-mib", type=int, default=16, help="guest RAM (default 16)")
    args = parser.parse_args()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="qmp-proxmox-") as tmp:
        procs = []
        if args.source is None or args.dest is None:
            # 24 MiB/s of dirtying against 16 MiB/s of bandwidth: it converges only once the
            # downtime limit has grown enough to send what is left in one go.
            src_proc, args.source = start_qmp_server(
                tmp, "src", "-m", "16M", "--guest-fill", "random", "--dirty-rate", "24M"
            )
            dst_proc, args.dest = start_qmp_server(tmp, "dst", "-m", "16M", "-incoming", "defer")
            procs = [src_proc, dst_proc]  # fmt: skip
        args.uri = args.uri or f"unix:{tmp}/mig.sock"
        try:
            return asyncio.run(migrate(args))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
