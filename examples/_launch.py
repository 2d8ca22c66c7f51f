"""What the examples share: starting a local qmp-server to drive (when no socket is given)."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def start_qmp_server(directory: str, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m qmp_server`` with a unix-socket monitor; wait for the socket."""
    sock = os.path.join(directory, f"{name}.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmp_server", *args, "-qmp", f"unix:{sock},server=on,wait=off"],
        stderr=subprocess.DEVNULL,
    )
    while not os.path.exists(sock):
        if proc.poll() is not None:
            raise SystemExit(f"qmp-server {name} exited with status {proc.returncode}")
        time.sleep(0.02)
    return proc, sock
