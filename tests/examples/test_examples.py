"""Every script in examples/ runs against servers it starts itself and exits 0."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_every_example_is_tested() -> None:
    tested = {
        "libvirt_sequence.py", "proxmox_polling.py", "downtime_comparison.py",
        "record_qmp_shell_session.py", "qmp_shell_session.txt", "evacuate_host.py",
        "fleet-compose.yaml",  # tests/examples/test_fleet_compose.py (and its fleets/)
        "grafana-fleet.json",  # tests/rest/test_fleet_metrics_units.py
    }  # fmt: skip
    # _launch.py is the examples' shared helper, exercised by every run below
    examples = {p.name for p in EXAMPLES.iterdir() if p.is_file() and not p.name.startswith("_")}
    assert examples == tested


@pytest.mark.parametrize("ack", [False, True])
def test_libvirt_sequence(ack: bool) -> None:
    out = run("libvirt_sequence.py", *(["--switchover-ack"] if ack else [])).stdout
    sent = [line.split("-> ", 1)[1] for line in out.splitlines() if " -> " in line]
    commands = [s.split('"execute": "', 1)[1].split('"', 1)[0] for s in sent]
    assert commands == [
        "query-migrate-capabilities", "migrate-set-capabilities",
        "query-migrate-capabilities", "migrate-set-capabilities",
        "query-migrate-parameters", "migrate-set-capabilities",
        "query-migrate-parameters", "migrate-set-capabilities",
        "migrate-set-parameters", "migrate-incoming", "migrate", "migrate-continue",
        "query-migrate", "migrate-set-capabilities", "migrate-set-capabilities",
        "migrate-set-parameters",
    ]  # fmt: skip
    assert '"resume": false' in sent[commands.index("migrate")]
    assert ('{"capability": "precopy-initial-data", "state": true}' in out) is ack
    assert "src !! MIGRATION pre-switchover" in out
    assert "status completed" in out


def test_proxmox_polling_raises_the_downtime() -> None:
    out = run("proxmox_polling.py").stdout
    assert "migration active, transferred" in out
    assert "auto-increased downtime to continue migration: 200 ms" in out
    assert out.splitlines()[-1].startswith("average migration speed:")


@pytest.mark.parametrize("compat", [None, "8.1"])
def test_downtime_comparison(compat: str | None) -> None:
    args = ["--", "--compat", compat] if compat else []
    out = run("downtime_comparison.py", *args).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["status"] == ["completed", "completed"]
    assert rows["digests-equal"] == ["True", "True"]
    off, on = int(rows["downtime"][0]), int(rows["downtime"][2])
    assert off >= 1000 > on  # load-ms=1000 is downtime only without the ACK


def test_evacuate_host_moves_every_vm_two_at_a_time() -> None:
    out = run("evacuate_host.py", "--concurrency", "2").stdout  # two fleets of its own, 4 VMs
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:5]}
    assert sorted(rows) == ["vm0", "vm1", "vm2", "vm3"]
    assert {name: row[:2] for name, row in rows.items()} == {
        "vm0": ["completed", "-"], "vm1": ["completed", "switchover-ack"],
        "vm2": ["completed", "-"], "vm3": ["completed", "switchover-ack"],
    }  # fmt: skip
    assert out.splitlines()[-2].startswith("downtime min/median/max: ")
    assert out.splitlines()[-1].startswith("evacuated 4 of 4 VMs in ")


def test_qmp_shell_transcript_is_what_qmp_shell_prints() -> None:
    spec = importlib.util.spec_from_file_location(
        "record", EXAMPLES / "record_qmp_shell_session.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.record() == (EXAMPLES / "qmp_shell_session.txt").read_text()
