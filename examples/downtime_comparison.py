"""Downtime with the switchover ACK off and on, for a guest with a VFIO-like device.

Run it as is; it starts a fresh source and destination for each run::

    python examples/downtime_comparison.py [--initial-bytes 32M] [--load-ms 1000]

The ``vfio-sim`` device has ``initial-bytes`` of initial precopy data; the destination needs
``load-ms`` to allocate resources for it once that data is in.  Without the capability the
destination only starts that work when the source has stopped the guest, so it is downtime.
With it (``precopy-initial-data``, or ``switchover-ack`` from QEMU 8.1 on: the name is taken
from ``query-migrate-capabilities``), the source waits for the destination's ACK before it
stops the guest.  The script exits 0 when both runs completed with equal guest digests and
the ACK run had less downtime.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from typing import Any

from _launch import start_qmp_server
from qemu.qmp import QMPClient


async def one_run(tmp: str, ack: bool, server_args: list[str]) -> Any:
    tag = "on" if ack else "off"
    src_proc, src_sock = start_qmp_server(tmp, f"src-{tag}", *server_args)
    dst_proc, dst_sock = start_qmp_server(tmp, f"dst-{tag}", *server_args, "-incoming", "defer")
    src, dst = QMPClient("src"), QMPClient("dst")
    try:
        await src.connect(src_sock)
        await dst.connect(dst_sock)
        for qmp in (src, dst):
            listed: Any = await qmp.execute("query-migrate-capabilities")
            names = [c["capability"] for c in listed]
            caps = [{"capability": "events", "state": True},
                    {"capability": "return-path", "state": True}]  # fmt: skip
            caps += [{"capability": n, "state": ack}
                     for n in ("precopy-initial-data", "switchover-ack") if n in names]  # fmt: skip
            await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
        uri = f"unix:{tmp}/mig-{tag}.sock"
        await dst.execute("migrate-incoming", {"uri": uri})
        with src.listener("MIGRATION") as events:
            await src.execute("migrate", {"uri": uri})
            async for event in events:
                data: Any = event["data"]
                if data["status"] in ("completed", "failed", "cancelled"):
                    break
        info: Any = await src.execute("query-migrate")
        if info["status"] == "completed":
            same = await src.execute("x-query-guest-digest") == await dst.execute(
                "x-query-guest-digest"
            )
            info["digests-equal"] = same
        return info
    finally:
        await src.disconnect()
        await dst.disconnect()
        for proc in (src_proc, dst_proc):
            proc.terminate()
            proc.wait(10)


async def compare(args: argparse.Namespace) -> int:
    device = (f"vfio-sim,id=gpu0,initial-bytes={args.initial_bytes},state-bytes=1M,"
              f"load-ms={args.load_ms}")  # fmt: skip
    server_args = ["-m", args.memory, "-device", device, *args.extra]
    with tempfile.TemporaryDirectory(prefix="qmp-downtime-") as tmp:
        off = await one_run(tmp, False, server_args)
        on = await one_run(tmp, True, server_args)
    print(f"{'':22}{'ACK off':>12}{'ACK on':>12}")
    for key, unit in (("status", ""), ("downtime", " ms"), ("total-time", " ms"),
                      ("digests-equal", "")):  # fmt: skip
        print(f"{key:22}{str(off.get(key)) + unit:>12}{str(on.get(key)) + unit:>12}")
    good = (off.get("digests-equal") and on.get("digests-equal")
            and on["downtime"] < off["downtime"])  # fmt: skip
    return 0 if good else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", default="64M", help="guest RAM (default 64M)")
    parser.add_argument("--initial-bytes", default="32M", help="device initial data (32M)")
    parser.add_argument("--load-ms", type=int, default=1000, help="device load time (1000)")
    parser.add_argument("extra", nargs="*", help="more qmp-server options, after --")
    return asyncio.run(compare(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
