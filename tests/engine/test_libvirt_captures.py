"""Profiles against libvirt's captures of real QEMU 8.1 / 10.0 answers (shared reference data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qmp_server.engine.config import MigrationConfig
from qmp_server.profiles import PROFILES
from qmp_server.wire.encoder import encode

DATA = Path(__file__).resolve().parents[3] / "shared" / "reference" / "data"


def _reply(name: str) -> object:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"reference data not available: {path}")
    text = path.read_text()
    # a .replies file is the command, a blank line, then the reply
    return json.loads(text.split("\n\n", 1)[1])["return"]


@pytest.mark.parametrize(
    ("profile", "capture"),
    [
        ("8.1", "libvirt_caps_8.1.0_x86_64.query-migrate-capabilities.replies"),
        ("10.0", "libvirt_caps_10.0.0_x86_64.query-migrate-capabilities.replies"),
    ],
)
def test_query_migrate_capabilities_matches_the_capture(profile: str, capture: str) -> None:
    expected = _reply(capture)
    ours = MigrationConfig(PROFILES[profile]).query_capabilities()
    assert ours == expected
    # and on the wire, QEMU's key order: {"state": ..., "capability": ...}
    assert encode(ours).startswith('[{"state": false, "capability": "xbzrle"}')
