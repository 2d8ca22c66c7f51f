#!/usr/bin/env bash
# Set up qmp-server in .venv and start it with a short demonstration, then keep it serving.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m qmp_server.demo "$@"
