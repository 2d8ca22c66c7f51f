"""The object-model commands introspect exactly as the recorded real QEMU 7.2 and 10.0.

The fixtures are raw ``query-qmp-schema`` answers recorded by
``tools/record_object_model.py --schema-fixture``; types are compared structurally (QEMU's
numbered names masked, reachable entries renumbered in walk order).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from qmp_server.qapi import Schema

from ._canon import canonical

DATA = Path(__file__).parent / "data"
COMMANDS = (
    "query-target", "query-kvm", "qom-list-types", "device-list-properties",
    "qom-list-properties", "query-machines", "query-cpu-definitions",
    "query-cpu-model-expansion", "query-tpm-models", "query-tpm-types",
    "query-command-line-options", "query-sev-capabilities", "query-sgx-capabilities",
)  # fmt: skip


def _live(version: str) -> list[dict[str, Any]]:
    with gzip.open(DATA / f"qemu-{version}-qmp-schema.json.gz", "rt", encoding="utf-8") as f:
        entries: list[dict[str, Any]] = json.load(f)["return"]
    return entries


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("command", COMMANDS)
def test_command_introspects_as_qemu(
    schemas: dict[str, Schema], version: str, command: str
) -> None:
    live = _live(version)
    ours = schemas[version].introspect()
    assert json.dumps(canonical(ours, command)) == json.dumps(canonical(live, command))


def test_every_profile_has_the_commands(schemas: dict[str, Schema]) -> None:
    for schema in schemas.values():
        assert all(schema.command(name) is not None for name in COMMANDS)
