#!/usr/bin/env python3
"""Reproduce the Dockerfile's two stages in venvs, where no Docker daemon runs.

    python tools/check_docker_build.py [--keep DIR]

1. The build stage's context: only what its ``COPY`` lines copy, into a scratch directory.
2. Its ``RUN`` (``sh scripts/build_wheels.sh /wheels``) with a fresh venv's ``python`` first on
   the PATH: qmp-server's wheel with both C extensions, and its dependencies' wheels.  The
   system's C compiler stands in for the stage's ``gcc``.
3. The final stage's install: a second fresh venv, ``pip install --no-index --find-links``
   those wheels only (as the image does, offline), the import of both extensions, and
   ``qmp-server --version`` run from outside the tree.

What it cannot check: the base image itself (python:3.11-slim's apt packages), the user and
volume lines, BuildKit's ``RUN --mount``.  Needs the package index for the dependencies' wheels
(step 2), as the real build does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    """One ``FROM`` of a Dockerfile and its instructions (continuations joined)."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    stages: list[Stage] = []
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest, re.IGNORECASE)
            if not m:
                raise ValueError(f"bad FROM: {rest}")
            stages.append(Stage(m.group(1), m.group(2)))
        elif not stages:
            raise ValueError(f"{keyword} before the first FROM")
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def run(argv: list[str], cwd: Path, path_first: Path | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, cwd=cwd, env=env, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    args = ap.parse_args()
    build, final = parse_dockerfile(DOCKERFILE.read_text())
    work = Path(args.keep or tempfile.mkdtemp(prefix="docker-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # 1. the build context, as the build stage's COPY lines make it
        context = work / "src"
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir()
        for copy in build.args("COPY"):
            *sources, dest = copy.split()
            for source in sources:
                target = context / dest / Path(source).name if dest.endswith("/") else (
                    context / dest
                )  # fmt: skip
                target.parent.mkdir(parents=True, exist_ok=True)
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.so", "*.egg-info", "build"))  # fmt: skip
                else:
                    shutil.copy2(REPO / source, target)
        # 2. the build stage's RUN (the apt-get line is the base image's business)
        wheels = work / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        build_venv = work / "build-venv"
        run([sys.executable, "-m", "venv", "--clear", str(build_venv)], work)
        for command in build.args("RUN"):
            if command.startswith("apt-get"):
                continue
            argv = command.replace("/wheels", str(wheels)).split()
            run(argv, context, path_first=build_venv / "bin")
        # 3. the final stage's install, from the wheels only
        final_venv = work / "image-venv"
        run([sys.executable, "-m", "venv", "--clear", str(final_venv)], work)
        (install,) = [c for c in final.args("RUN") if "pip install" in c]
        pip_line = install.split("pip install", 1)[1].split("&&", 1)[0]
        check_line = install.split("&&", 1)[1].strip()
        bin_dir = final_venv / "bin"
        run([str(bin_dir / "pip"), "install", *pip_line.replace("/wheels", str(wheels)).split()],
            work)  # fmt: skip
        run([str(bin_dir / "python"), "-c", check_line.split('"')[1]], work)
        run([str(bin_dir / "qmp-server"), "--version"], work)
        print(f"ok: both stages reproduced in {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
