"""The Dockerfile's stages, read without a Docker daemon (tools/check_docker_build.py runs
their commands in venvs; it needs the package index, so it is not part of the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_docker_build", ROOT / "tools" / "check_docker_build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_two_stages_build_then_slim_runtime() -> None:
    stages = _checker().parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert [(s.image, s.name) for s in stages] == [
        ("python:3.11-slim", "build"), ("python:3.11-slim", None),
    ]  # fmt: skip
    build, final = stages
    # the build stage has a compiler and builds the wheels with the checking script
    assert any("gcc" in r.split() for r in build.args("RUN"))
    assert "sh scripts/build_wheels.sh /wheels" in build.args("RUN")
    # every source it copies exists (the build context is the repository)
    for copy in build.args("COPY"):
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), source
    # the final stage: no compiler, no source tree; the wheels from the build stage, offline
    assert not any(k == "COPY" for k, _ in final.instructions)
    runs = " ".join(final.args("RUN"))
    assert "gcc" not in runs and "apt-get" not in runs
    assert "--mount=type=bind,from=build,source=/wheels" in runs
    assert "--no-index --find-links /wheels qmp-server" in runs
    assert "import qmp_server.engine._pages, qmp_server.wire._qjson" in runs
    assert final.args("ENTRYPOINT") == ['["qmp-server"]']
    assert final.args("USER") == ["qmp"]


def test_build_script_checks_both_extensions() -> None:
    script = (ROOT / "scripts" / "build_wheels.sh").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for ext in ("qmp_server.engine._pages", "qmp_server.wire._qjson"):
        assert f'name = "{ext}"' in pyproject
        assert ext.replace(".", "/") in script
