"""The conformance recordings replayed against the VMs of one fleet process (issue 16).

A fleet VM is what a single qmp-server process with the same options is, byte for byte on its
monitors: each recorded scenario gets a VM of its own in one ``qmp-server --fleet FILE``
process (a few hundred VMs per QEMU version), and every session is replayed on its VM's
monitor, several at once, as an orchestrator polling a fleet would.  Scenarios that name the
same socket or file run one after the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from . import _harness as h

FIXTURES = {"7.2": h.FIXTURE_DIR, "10.0": h.FIXTURE_DIR_100}
#: groups whose scenarios need their own process: fixed monitor chardevs, a disk image
_OWN_PROCESS = {"domain-start", "lifecycle-guest", "startup", "device"}


def _scenarios(version: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(FIXTURES[version].glob("*.json")):
        if path.stem in _OWN_PROCESS:
            continue
        for sc in h.load_fixture(path.stem, FIXTURES[version])["scenarios"]:
            if not sc.get("startup") and sc.get("replay") is not False:
                out.append((f"{path.stem}/{sc['name']}", sc))
    return out


def _fleet_file(version: str, scenarios: list[tuple[str, dict[str, Any]]], d: Path) -> Path:
    lines = []
    for i, (_, sc) in enumerate(scenarios):
        args = [
            "--compat",
            version,
            *sc.get("argv", []),
            "-qmp",
            f"unix:{d}/s{i}.sock,server=on,wait=off",
        ]
        lines += ["[[vm]]", f'name = "s{i}"', f"args = {json.dumps(args)}", ""]
    path = d / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.mark.parametrize("version", list(FIXTURES))
def test_fleet_vms_answer_as_single_processes(version: str, tmp_path: Path) -> None:
    scenarios = _scenarios(version)
    fleet_file = _fleet_file(version, scenarios, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(h.REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmp_server", "--fleet", str(fleet_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, cwd=str(h.REPO_ROOT),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        last = tmp_path / f"s{len(scenarios) - 1}.sock"
        while not last.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the fleet did not start"
            time.sleep(0.05)
        target = h.qmp_server_target(version)

        def replay(item: tuple[int, tuple[str, dict[str, Any]]]) -> str | None:
            i, (case, sc) = item
            with h.address_locks(sc):
                client = h.Client(str(tmp_path / f"s{i}.sock"))
                try:
                    mismatches = h.replay_steps(client, target, sc["steps"])
                finally:
                    client.close()
            if not mismatches:
                return None
            return f"{case}:\n" + "\n".join(m.render() for m in mismatches)

        with ThreadPoolExecutor(24) as pool:
            failures = [f for f in pool.map(replay, enumerate(scenarios)) if f]
    finally:
        proc.terminate()
        proc.wait(30)
    assert not failures, f"{len(failures)} of {len(scenarios)} differ:\n\n" + "\n\n".join(
        failures[:5]
    )
