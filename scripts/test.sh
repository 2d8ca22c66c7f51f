#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine (Python 3.11, root or sudo-less
# Debian), then run the whole suite: lint, types, tests.  CI calls exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: qemu-system-x86 is the live QEMU 7.2 oracle (differential
# tests and the benchmark's reference; its recorded answers are in tests/conformance/fixtures),
# chromium renders the dashboard in the browser test, libvirt drives qmp-server as an emulator.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
  # Chromium drives the dashboard test (playwright uses it; it never downloads a browser).
  command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-liberation)
  # libvirt 9.0 drives qmp-server in tests/libvirt (its daemons run in private namespaces
  # the tests create; nothing is started at install time without systemd).
  command -v libvirtd >/dev/null 2>&1 || need+=(libvirt-daemon-system libvirt-clients)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check qmp_server tests benchmarks tools examples
.venv/bin/mypy
exec .venv/bin/pytest "$@"
