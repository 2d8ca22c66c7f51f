"""docs/user-guide.md stays true: its `sh test` blocks run, and its tables match the code."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qmp_server import migrate_cli
from qmp_server.engine.capabilities import CAPABILITIES
from qmp_server.engine.devices import VfioSimConfig
from qmp_server.engine.host import HostInfo
from qmp_server.engine.sizes import format_size
from qmp_server.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "user-guide.md"
TEXT = GUIDE.read_text()
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.S | re.M)


def _tested_blocks() -> list[str]:
    return [body for info, body in FENCE.findall(TEXT) if info.split() == ["sh", "test"]]


def test_the_guide_has__tested_blocks() -> None:
    assert len(_tested_blocks()) >= 6


@pytest.mark.parametrize("block", _tested_blocks(), ids=lambda b: b.splitlines()[0][:40])
def test_shell_block(block: str, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent  # the venv whose python runs the tests
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", REPO=str(ROOT))
    log = tmp_path / "block.log"
    with log.open("w") as out_file:
        # Output goes to a file: a server left behind by a failing block would hold a pipe open.
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
            stdout=out_file, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=120)
        finally:
            # the block's background servers, if it failed before killing them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    out = log.read_text()
    assert proc.returncode == 0, out


def test_profiles_table_matches_the_code() -> None:
    rows = {
        "(default)": PROFILES["default"],
        "`7.2`": PROFILES["7.2"],
        "`8.1`": PROFILES["8.1"],
        "`10.0`": PROFILES["10.0"],
    }
    for label, profile in rows.items():
        line = next(row for row in TEXT.splitlines() if row.startswith(f"| {label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[2]) == len(CAPABILITIES[profile.name]), line
        ack = profile.ack_capability
        assert cells[3] == (f"`{ack}`" if ack else "none"), line


def test_vfio_sim_defaults_match_the_code() -> None:
    defaults = VfioSimConfig(id="x")
    table = {
        "initial-bytes": format_size(defaults.initial_bytes).replace(" MiB", "M"),
        "state-bytes": format_size(defaults.state_bytes).replace(" MiB", "M"),
        "load-ms": str(defaults.load_ms),
        "dirty-rate": str(defaults.dirty_rate),
    }
    for prop, value in table.items():
        assert f"| `{prop}` | {value} |" in TEXT, prop


def test_host_keys_match_the_code() -> None:
    section = TEXT.split("**`--host`** keys", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`([a-z-]+)`", section)) - {
        "postcopy-ram", "block", "x-colo", "--host",
    }  # fmt: skip
    fields = {name.replace("_", "-") for name in HostInfo.__dataclass_fields__}
    assert fields <= documented


def test_exit_statuses_match_the_code() -> None:
    expected = (
        f"**Exit status:** {migrate_cli.EXIT_COMPLETED} the migration completed; "
        f"{migrate_cli.EXIT_FAILED} it failed"
    )
    assert expected in TEXT
    assert f"{migrate_cli.EXIT_USAGE} usage error" in TEXT
    assert f"{migrate_cli.EXIT_CANCELLED_TIMEOUT} cancelled because `--timeout`" in TEXT
    assert f"{migrate_cli.EXIT_CANCELLED_INTERRUPT} cancelled by\nCtrl-C" in TEXT


def test_every_server_option_in_the_table_exists() -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "qmp_server", "--help"], capture_output=True, text=True
    ).stdout
    table = TEXT.split("## 2.", 1)[1].split("Errors are printed", 1)[0]
    # -device is missing from qmp-server --help (reported); it is parsed by the CLI.
    for option in set(re.findall(r"`(--?[a-z][a-z-]*)", table)) - {"-device"}:
        assert option in usage, option


def test_linked_documents_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", TEXT):
        if not target.startswith("http"):
            assert (GUIDE.parent / target).exists(), target
