"""HMP ``info migrate`` of postcopy, XBZRLE, multifd and 7.2 compress migrations, against live
QEMU 7.2 and 10.0.

The two-party recordings ``postcopy-hmp-info``, ``xbzrle-hmp-info``, ``multifd-hmp-info`` and
``compress-hmp-info`` (7.2) asked each side for
``query-migrate`` and, right after, for ``info migrate`` (through ``human-monitor-command``).
Where nothing moved between the two (both sides once completed, the destination in
postcopy-active), qmp-server's text for QEMU's QMP answer must be QEMU's own text: the
postcopy counters, the destination's blocktime, the xbzrle cache lines, the multifd bytes,
7.2's compression lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qmp_server.hmp.format import info_migrate
from qmp_server.profiles import PROFILES

FIXTURES = Path(__file__).resolve().parent.parent / "conformance" / "two_party" / "fixtures"


def _pairs(version: str, name: str) -> list[tuple[str, dict[str, Any], str]]:
    """(side, query-migrate return, the info migrate text that followed it)."""
    data = json.loads((FIXTURES / f"qemu-{version}" / f"{name}.json").read_text())
    out = []
    for side in ("src", "dst"):
        last: dict[str, Any] | None = None
        sent = ""
        for entry in data["run"]["sides"][side]["stream"]:
            if "sent" in entry:
                sent = entry["sent"]
                continue
            line = entry.get("line", "")
            if not line.startswith('{"return"'):
                continue
            reply = json.loads(line)["return"]
            if "query-migrate" in sent:
                last = reply
            elif "info migrate" in sent and last is not None:
                if last.get("status") == "completed" or side == "dst":
                    out.append((side, last, reply))
                last = None
    return out


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_info_migrate_in_postcopy_is_qemus_text(version: str) -> None:
    pairs = _pairs(version, "postcopy-hmp-info")
    assert {side for side, _, _ in pairs} == {"src", "dst"}
    assert any("postcopy blocktime" in text for _, _, text in pairs)
    for _side, info, text in pairs:
        assert info_migrate(PROFILES[version], info) == text.replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("version", "name", "marker"),
    [
        ("7.2", "xbzrle-hmp-info", "xbzrle cache miss"),
        ("10.0", "xbzrle-hmp-info", "xbzrle cache miss"),
        ("7.2", "multifd-hmp-info", "multifd bytes"),
        ("10.0", "multifd-hmp-info", "multifd bytes"),
        ("7.2", "compress-hmp-info", "compression pages"),
    ],
)
def test_info_migrate_with_xbzrle_multifd_compress_is_qemus_text(
    version: str, name: str, marker: str
) -> None:
    pairs = _pairs(version, name)
    assert any(marker in text for _, _, text in pairs)
    for _side, info, text in pairs:
        assert info_migrate(PROFILES[version], info) == text.replace("\r\n", "\n")
