"""docs/fleet.md: its fleet file example parses to the command lines the text says."""

from __future__ import annotations

import re
from pathlib import Path

from qmp_server.cli import parse_args
from qmp_server.fleet.config import parse_fleet_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"


def test_the_example_fleet_file() -> None:
    text = DOC.read_text()
    (toml,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    spec = parse_fleet_text(toml)
    assert len(spec.vms) == 112
    assert dict(spec.link) == {"link-bandwidth": "1G"}
    for vm in spec.vms:
        assert parse_args(list(vm.args)) is not None
    (db,) = [vm for vm in spec.vms if vm.name == "db"]
    said = re.search(r"`db` gets `([^`]*)`", text)
    assert said is not None
    start = " ".join(said.group(1).split()).removesuffix(" ...")
    assert " ".join(db.args).startswith(start)
