"""``python -m qmp_server.demo``: start qmp-server and show what it answers, then keep serving.

The demonstration talks to a real qmp-server process through qemu.qmp, the client library
QEMU's own tools use, and prints each exchange: the capability the project exists for
(precopy-initial-data, released as switchover-ack) refused without return-path with QEMU's
exact text, then accepted with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient

STEPS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("The emulated version", "query-version", None),
    ("Runstate", "query-status", None),
    (
        "precopy-initial-data without return-path: refused, as QEMU refuses it",
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "precopy-initial-data", "state": True}]},
    ),
    (
        "precopy-initial-data with return-path: accepted",
        "migrate-set-capabilities",
        {
            "capabilities": [
                {"capability": "return-path", "state": True},
                {"capability": "precopy-initial-data", "state": True},
            ]
        },
    ),
    ("Parameters as query-migrate-parameters reports them", "query-migrate-parameters", None),
    ("A range check with QEMU's text", "migrate-set-parameters", {"downtime-limit": 3000000}),
]


def _show(title: str, name: str, args: dict[str, Any] | None, answer: str) -> None:
    request = {"execute": name, **({"arguments": args} if args else {})}
    print(f"\n# {title}")
    print(f"-> {json.dumps(request)}")
    print(f"<- {answer}")


async def _run_demo(sock: str) -> None:
    qmp = QMPClient("demo")
    await qmp.connect(sock)
    try:
        for title, name, args in STEPS:
            try:
                result = await qmp.execute(name, args)
                answer = json.dumps({"return": result})
            except ExecuteError as err:
                answer = json.dumps({"error": {"class": err.error_class, "desc": str(err)}})
            _show(title, name, args, answer)
        caps: Any = await qmp.execute("query-migrate-capabilities")
        on = [c["capability"] for c in caps if c["state"]]
        print(f"\n# Capabilities now on: {', '.join(on)}")
    finally:
        await qmp.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qmp-server-demo", description=__doc__)
    parser.add_argument("--dir", default="run", help="where the sockets go (default ./run)")
    parser.add_argument("--port", type=int, default=4444, help="QMP TCP port (default 4444)")
    parser.add_argument("--exit", action="store_true", help="stop after the demonstration")
    parser.add_argument("extra", nargs="*", help="more qmp-server options (after --)")
    args = parser.parse_args(argv)
    run_dir = Path(args.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = str(run_dir / "qmp.sock")
    cmd = [
        sys.executable, "-m", "qmp_server", "-name", "demo",
        "-qmp", f"unix:{sock},server=on,wait=off",
        "-qmp", f"tcp:127.0.0.1:{args.port},server=on,wait=off",
        *args.extra,
    ]  # fmt: skip
    print("$ " + " ".join(cmd[2:]).replace("-m qmp_server", "qmp-server"))
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                print("qmp-server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        asyncio.run(_run_demo(sock))
        if args.exit:
            return 0
        print(
            f"\nqmp-server keeps serving (Ctrl-C stops it). Connect with:\n"
            f"  .venv/bin/qmp-shell {sock}\n"
            f"  .venv/bin/qmp-shell 127.0.0.1:{args.port}"
        )
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
