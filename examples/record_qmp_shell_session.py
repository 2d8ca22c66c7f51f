"""Record ``qmp_shell_session.txt``: qmp-shell driven through stdin against a real qmp-server.

    python examples/record_qmp_shell_session.py            # rewrite qmp_shell_session.txt
    python examples/record_qmp_shell_session.py --stdout   # print it instead

qmp-shell reads commands from stdin when it is not a terminal; it then prints its prompt
``(QEMU) `` but not the line typed.  The transcript puts each typed line back after its prompt,
so it reads like the interactive session.  ``-v`` makes qmp-shell print the QMP it sends and
``-p`` pretty-prints the answers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "(QEMU) "
#: What is typed, one qmp-shell command a line (qmp-shell syntax: ``name key=value ...``).
COMMANDS = [
    "query-version",
    "query-status",
    'migrate-set-capabilities capabilities=[{"capability":"precopy-initial-data","state":true}]',
    'migrate-set-capabilities capabilities=[{"capability":"return-path","state":true},'
    '{"capability":"precopy-initial-data","state":true}]',
    "migrate-set-parameters downtime-limit=3000000",
    "migrate-set-parameters downtime-limit=500 max-bandwidth=67108864",
    "query-migrate",
    "migrate-incoming uri=unix:/tmp/nowhere.sock",
]
HEADER = """\
# A qmp-shell session against qmp-server, recorded by examples/record_qmp_shell_session.py.
# The server:  qmp-server -m 64M -qmp unix:run/qmp.sock,server=on,wait=off
# The shell:   qmp-shell -v -p run/qmp.sock
# (-v echoes the QMP sent, -p pretty-prints the answers)
"""


def record() -> str:
    with tempfile.TemporaryDirectory(prefix="qmp-shell-") as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "qmp_server", "-m", "64M",
             "-qmp", f"unix:{sock},server=on,wait=off"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not os.path.exists(sock):
                if server.poll() is not None:
                    raise SystemExit("qmp-server did not start")
                time.sleep(0.02)
            shell = subprocess.run(
                [sys.executable, "-m", "qemu.qmp.qmp_shell", "-v", "-p", sock],
                input="".join(f"{c}\n" for c in COMMANDS),
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(10)
    output = shell.stdout.replace(sock, "run/qmp.sock")
    # Put each typed command back after its prompt; the last prompt met end of input.
    parts = output.split(PROMPT)
    lines = [parts[0]]
    for i, part in enumerate(parts[1:]):
        typed = COMMANDS[i] if i < len(COMMANDS) else ""
        lines.append(f"{PROMPT}{typed}\n{part}" if typed else f"{PROMPT}\n{part}")
    return HEADER + "".join(lines).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args()
    text = record()
    if args.stdout:
        sys.stdout.write(text)
    else:
        (Path(__file__).resolve().parent / "qmp_shell_session.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
