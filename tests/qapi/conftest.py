from __future__ import annotations

from pathlib import Path

import pytest

from qmp_server.profiles import PROFILES
from qmp_server.qapi import Schema, load_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema" / "migration.json"


@pytest.fixture(scope="session")
def schemas() -> dict[str, Schema]:
    return {name: load_schema(SCHEMA, p.defines) for name, p in PROFILES.items()}


@pytest.fixture(scope="session")
def schema72(schemas: dict[str, Schema]) -> Schema:
    return schemas["7.2"]
