#!/bin/sh
# Build qmp-server's wheel, with its C extensions (qmp_server/engine/_pages.c,
# qmp_server/wire/_qjson.c), and the wheels of its dependencies into OUTDIR.
#
#   sh scripts/build_wheels.sh OUTDIR        (from the source tree; `python` must have pip)
#
# The extensions are optional in pyproject.toml (a pip install without a compiler falls back to
# numpy and Python), so this checks that both were really built: the Dockerfile's build stage
# runs it, and an image without its C fast path fails to build instead of running slower.
set -eu
out=${1:?usage: build_wheels.sh OUTDIR}
python -m pip wheel --no-cache-dir --wheel-dir "$out" .
python - "$out" <<'PY'
import glob
import sys
import zipfile

wheels = glob.glob(f"{sys.argv[1]}/qmp_server-*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one qmp_server wheel in {sys.argv[1]}, found {wheels}")
names = zipfile.ZipFile(wheels[0]).namelist()
for ext in ("qmp_server/engine/_pages", "qmp_server/wire/_qjson"):
    if not any(n.startswith(ext) and n.endswith(".so") for n in names):
        sys.exit(f"{wheels[0]}: {ext} was not built (is a C compiler installed?)")
print(f"{wheels[0]}: both C extensions built")
PY
