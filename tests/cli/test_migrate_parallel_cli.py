"""``qmp-migrate --parallel --compressed`` as ``virsh migrate`` takes them: multifd and the
compression methods on both sides, the tuning restored afterwards, refusals before anything."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol
from server_process import ServerProcess

from qmp_server.migrate_tuning import Tuning, TuningError

Start = Callable[..., ServerProcess]


def test_translation() -> None:
    t = Tuning.from_options(parallel=True, connections=4, compressed=True, methods="zstd",
                            zstd_level=3)  # fmt: skip
    assert t.capabilities() == {"multifd"}
    assert t.parameters() == {"multifd-channels": 4, "multifd-compression": "zstd",
                              "multifd-zstd-level": 3}  # fmt: skip
    assert Tuning.from_options(parallel=False, connections=None, compressed=True,
                               methods=None).capabilities() == {"xbzrle"}  # fmt: skip
    with pytest.raises(TuningError, match="only supported with parallel migration"):
        Tuning.from_options(parallel=False, connections=None, compressed=True, methods="zlib")
    with pytest.raises(TuningError, match="Unsupported compression method 'lz4'"):
        Tuning.from_options(parallel=True, connections=None, compressed=True, methods="lz4")


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_parallel_zstd_migration(qmp_server: Start, tmp_path: Path, version: str) -> None:
    src = qmp_server("--compat", version, "-m", "64", "--guest-fill", "text")
    dst = qmp_server("--compat", version, "-m", "64", "--guest-fill", "text",
                     "-incoming", "defer")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.migrate_cli", "--source", src.socket,
         "--dest", dst.socket, "--uri", f"unix:{tmp_path}/mig.sock", "--parallel",
         "--parallel-connections", "3", "--compressed", "--comp-methods", "zstd",
         "--json", "--quiet"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["digests-equal"] is True
    assert result["multifd-bytes"] > 0
    if version == "10.0":  # 10.0 counts what the channels wrote: text compresses
        assert result["multifd-bytes"] < 32 << 20
    for server in (src, dst):  # libvirt's reset: the tuning is undone on both sides
        mon = QEMUMonitorProtocol(server.socket)
        mon.connect()
        params = mon.cmd("query-migrate-parameters")
        caps = {c["capability"]: c["state"] for c in mon.cmd("query-migrate-capabilities")}
        mon.close()
        assert params["multifd-channels"] == 2 and params["multifd-compression"] == "none"
        assert caps["multifd"] is False


def test_refused_before_anything(qmp_server: Start, tmp_path: Path) -> None:
    src = qmp_server("--compat", "10.0", "-m", "64")
    dst = qmp_server("--compat", "10.0", "-m", "64", "-incoming", "defer")
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.migrate_cli", "--source", src.socket,
         "--dest", dst.socket, "--uri", f"unix:{tmp_path}/mig.sock", "--compressed",
         "--comp-methods", "mt"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Migration option 'compress' is not supported by source QEMU binary" in proc.stderr
