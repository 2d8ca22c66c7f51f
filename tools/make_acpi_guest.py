#!/usr/bin/env python3
"""Write the tiny boot disk that plays a guest OS honouring the ACPI power button.

    python tools/make_acpi_guest.py [PATH ...]   (default: /tmp/qmpconf-acpi-guest.img and,
                                                  when it exists, the same path in /srv/trixie)

A real QEMU booting SeaBIOS with no OS shows only POWERDOWN after ``system_powerdown``.  To
record what QEMU does when the guest does power off (the ``lifecycle-guest`` conformance
group), SeaBIOS boots this 512-byte sector from an IDE disk.  In 16-bit real mode it enables
the power-button event in the PIIX4/ICH9 PM1 enable register (SeaBIOS puts the PM block at
I/O port 0x600), polls PM1 status until the button's bit is set, then writes SLP_EN with sleep
type 0 (soft off) to PM1 control and halts.  qmp-server's modelled guest does the same
(``qmp_server/engine/power.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

PM_BASE = 0x600
PWRBTN = 0x0100  # PM1 status/enable bit 8
SLP_EN = 0x2000  # PM1 control bit 13, sleep type 0 = soft off


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def boot_sector() -> bytes:
    enable = b"\xba" + _u16(PM_BASE + 2) + b"\xb8" + _u16(PWRBTN) + b"\xef"  # out PM1_EN
    poll = b"\xba" + _u16(PM_BASE) + b"\xed" + b"\xa9" + _u16(PWRBTN)  # in PM1_STS; test
    jz_back = b"\x74" + ((-(len(poll) + 2)) & 0xFF).to_bytes(1, "little")
    off = b"\xba" + _u16(PM_BASE + 4) + b"\xb8" + _u16(SLP_EN) + b"\xef"  # out PM1_CNT
    halt = b"\xf4\xeb\xfe"  # hlt; jmp $
    code = enable + poll + jz_back + off + halt
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def main(argv: list[str]) -> int:
    paths = argv or ["/tmp/qmpconf-acpi-guest.img"]
    if not argv and Path("/srv/trixie/tmp").is_dir():
        paths.append("/srv/trixie/tmp/qmpconf-acpi-guest.img")
    image = boot_sector() + bytes(1 << 20)
    for path in paths:
        Path(path).write_bytes(image)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
