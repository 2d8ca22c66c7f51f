"""The introspection of every domain command equals the real QEMU's, per emulated version.

``tests/commands/fixtures/domain-schema-qemu-<version>.json.gz`` holds what the real QEMU 7.2 and
10.0 answer to ``query-qmp-schema`` for these commands and every type they reach (recorded by
``tools/record_domain_model.py``).  Type numbers are masked by walking from each command
(``tests/qapi/_canon.py``), so only structure counts: member names, order, optionality, types,
enum values, features.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from qapi._canon import canonical

from qmp_server.profiles import PROFILES
from qmp_server.qapi import load_schema
from qmp_server.runtime.runtime import SCHEMA_PATH

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COMMANDS = (
    "query-chardev",
    "query-chardev-backends",
    "query-hotpluggable-cpus",
    "query-cpus-fast",
    "qom-list",
    "qom-get",
    "query-iothreads",
    "query-memory-devices",
    "query-block",
    "query-named-block-nodes",
    "query-blockstats",
)


def _recorded(version: str) -> list[dict[str, Any]]:
    with gzip.open(FIXTURES / f"domain-schema-qemu-{version}.json.gz", "rt") as f:
        schema: list[dict[str, Any]] = json.load(f)["schema"]
    return schema


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("command", COMMANDS)
def test_introspection_matches_qemu(version: str, command: str) -> None:
    ours = load_schema(SCHEMA_PATH, PROFILES[version].defines).introspect()
    assert canonical(ours, command) == canonical(_recorded(version), command)
