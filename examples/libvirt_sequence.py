"""The command sequence libvirt's QEMU driver sends for a live migration, with qemu.qmp.

Run it as is (it starts a source and a destination qmp-server in a temporary directory), or
point it at two monitors you started yourself::

    python examples/libvirt_sequence.py
    python examples/libvirt_sequence.py --source /run/src.sock --dest /run/dst.sock \\
        --uri tcp:127.0.0.1:4449

Every command is printed as it goes on the wire (``->``), with the answer (``<-``) and the
MIGRATION events (``!!``).  The order follows libvirt (docs/user-guide.md, "How libvirt and
Proxmox drive a migration"): events on, parameters saved, every capability set explicitly,
``pause-before-switchover`` on the source, ``migrate-incoming``, ``migrate`` with
``resume: false``, ``migrate-continue`` at ``pre-switchover``, the final ``query-migrate``,
and the reset.  libvirt has no switchover-ack support; ``--switchover-ack`` shows where it
would go.  Errors print as libvirt prints them:
``error: internal error: unable to execute QEMU command 'X': desc``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from typing import Any

from _launch import start_qmp_server
from qemu.qmp import ExecuteError, QMPClient


async def run(qmp: QMPClient, side: str, command: str, args: dict[str, Any] | None = None) -> Any:
    request: dict[str, Any] = {"execute": command}
    if args is not None:
        request["arguments"] = args
    print(f"{side:>4} -> {json.dumps(request)}")
    try:
        answer = await qmp.execute(command, args)
    except ExecuteError as err:
        # libvirt's wording (VIR_ERR_INTERNAL_ERROR), as virsh shows it.
        raise SystemExit(
            f"error: internal error: unable to execute QEMU command '{command}': {err}"
        ) from None
    text = json.dumps(answer)
    print(f"{side:>4} <- {text if len(text) < 120 else text[:117] + '...'}")
    return answer


async def migrate(source: str, dest: str, uri: str, ack: bool) -> int:
    src, dst = QMPClient("source"), QMPClient("destination")
    await src.connect(source)
    await dst.connect(dest)
    # At QEMU start libvirt probes the capabilities and turns "events" on, once.
    names: dict[str, list[str]] = {}
    for side, qmp in (("src", src), ("dst", dst)):
        caps = await run(qmp, side, "query-migrate-capabilities")
        names[side] = [c["capability"] for c in caps]
        events_on = [{"capability": "events", "state": True}]
        await run(qmp, side, "migrate-set-capabilities", {"capabilities": events_on})
    # Prepare (destination) and Perform (source): save parameters, set every capability.
    saved = {}
    for side, qmp in (("dst", dst), ("src", src)):
        params = await run(qmp, side, "query-migrate-parameters")
        if side == "src":
            saved = {k: params[k] for k in ("max-bandwidth", "downtime-limit") if k in params}
        on = {"return-path"}
        on |= {"pause-before-switchover"} if side == "src" else {"late-block-activate"}
        if ack:
            on |= {n for n in ("precopy-initial-data", "switchover-ack") if n in names[side]}
        caps = [{"capability": n, "state": n in on} for n in names[side] if n != "events"]
        await run(qmp, side, "migrate-set-capabilities", {"capabilities": caps})
    await run(src, "src", "migrate-set-parameters", {"max-bandwidth": 1 << 30})
    await run(dst, "dst", "migrate-incoming", {"uri": uri})
    with src.listener("MIGRATION") as events:
        await run(src, "src", "migrate", {"uri": uri, "resume": False})
        async for event in events:
            data: Any = event["data"]
            status = data["status"]
            print(f" src !! MIGRATION {status}")
            if status == "pre-switchover":  # libvirt finishes its block jobs here
                await run(src, "src", "migrate-continue", {"state": "pre-switchover"})
            if status in ("completed", "failed", "cancelled"):
                break
    info = await run(src, "src", "query-migrate")
    # Reset (qemuMigrationParamsReset's behaviour): all capabilities false, parameters back.
    for side, qmp in (("src", src), ("dst", dst)):
        off = [{"capability": n, "state": False} for n in names[side] if n != "events"]
        await run(qmp, side, "migrate-set-capabilities", {"capabilities": off})
    await run(src, "src", "migrate-set-parameters", saved)
    await src.disconnect()
    await dst.disconnect()
    print(f"\nstatus {info['status']}, downtime {info.get('downtime')} ms")
    if info["status"] != "completed":
        print(f"error: operation failed: job 'migration out' failed: {info.get('error-desc')}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="source monitor (default: start one)")
    parser.add_argument("--dest", help="destination monitor, -incoming defer (default: start one)")
    parser.add_argument("--uri", help="migration URI (default: a unix socket)")
    parser.add_argument("--switchover-ack", action="store_true", help="turn the ACK on too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qmp-libvirt-") as tmp:
        procs = []
        if args.source is None or args.dest is None:
            device = ["-device", "vfio-sim,id=gpu0,initial-bytes=16M,load-ms=300"]
            src_proc, args.source = start_qmp_server(tmp, "src", "-m", "64M", *device)
            dst_proc, args.dest = start_qmp_server(tmp, "dst", "-m", "64M", "-incoming", "defer",
                                                   *device)  # fmt: skip
            procs = [src_proc, dst_proc]
        try:
            return asyncio.run(
                migrate(args.source, args.dest, args.uri or f"unix:{tmp}/mig.sock",
                        args.switchover_ack)
            )  # fmt: skip
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
