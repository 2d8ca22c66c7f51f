"""examples/fleet-compose.yaml: its fleets parse and run as the compose file says.

No container runs here (no Docker daemon): the YAML is loaded, every fleet file it mounts is
parsed by the fleet's own parser, each service's command is a valid fleet command line, every
VM's options a valid qmp-server command line, and the ports, migration targets and Prometheus
targets agree with each other.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from qmp_server.cli import parse_args
from qmp_server.fleet.cli import parse_fleet_command_line
from qmp_server.fleet.config import FleetSpec, parse_fleet_file

yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMPOSE = EXAMPLES / "fleet-compose.yaml"
FLEETS = ("host-a", "host-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the example's file (bind mounts of ./ paths)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            out[target] = (EXAMPLES / source).resolve()
    return out


def fleet_of(service: dict[str, Any]) -> tuple[list[str], FleetSpec]:
    """The service's command with the mounted fleet file's local path, and that fleet."""
    command = list(service["command"])
    files = mounts(service)
    i = command.index("--fleet")
    local = files[command[i + 1]]
    assert local.is_file(), local
    command[i + 1] = str(local)
    return command, parse_fleet_file(str(local))


def published(service: dict[str, Any]) -> set[int]:
    return {int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])}


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*FLEETS, "prometheus"}
    for name in FLEETS:
        assert services[name]["image"].startswith("qmp-server")
        assert services[name]["networks"] == ["fleet"]
    # the image is the repository's Dockerfile
    assert (COMPOSE.parent / services["host-a"]["build"] / "Dockerfile").is_file()


@pytest.mark.parametrize("name", FLEETS)
def test_fleet_command_and_file(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    command, spec = fleet_of(service)
    line = parse_fleet_command_line(command)
    assert line.spec == spec
    assert line.link_bandwidth is not None  # the host's NIC is modelled
    process = parse_args(list(line.process_args))
    assert process is not None
    # the fleet monitor and the REST mirror listen where the compose file publishes them
    assert [m.describe() for m in process.monitors] == ["tcp:0.0.0.0:4444"]
    assert process.http == ("0.0.0.0", 8080)
    assert published(service) == {4444, 8080}
    assert len(spec.vms) >= 2
    for vm in spec.vms:
        options = parse_args(list(vm.args))
        assert options is not None, vm
        # each VM's QMP socket is on the service's /run/qmp volume
        assert [m.describe() for m in options.monitors] == [f"unix:/run/qmp/{vm.name}.sock"]


def test_every_source_has_a_destination(compose: dict[str, Any]) -> None:
    services = compose["services"]
    _, source = fleet_of(services["host-a"])
    _, target = fleet_of(services["host-b"])
    sources = [parse_args(list(vm.args)) for vm in source.vms]
    targets = [parse_args(list(vm.args)) for vm in target.vms]
    assert all(o is not None and o.incoming is None for o in sources)
    ports = [o.incoming for o in targets if o is not None]
    assert all(p is not None and p.startswith("tcp:0.0.0.0:") for p in ports)
    assert len(set(ports)) == len(ports) == len(sources)

    # pair by size and devices: every source VM has a destination of its shape
    def shape(argv: tuple[str, ...]) -> tuple[str, ...]:
        keep = ("-m", "-compat", "-device", "-machine")
        return tuple(f"{a}={b}" for a, b in itertools.pairwise(argv) if a in keep)

    assert sorted(shape(vm.args) for vm in source.vms) == sorted(
        shape(vm.args) for vm in target.vms
    )


def test_prometheus_scrapes_every_fleet(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    config_path = mounts(service)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    targets = {t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}  # fmt: skip
    assert targets == {f"{name}:8080" for name in FLEETS}
