"""The QOM tree built from the recorded object model (QEMU 7.2 and 10.0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qmp_server.engine.qom_tree import QomTree, device_identity, load_model
from qmp_server.engine.topology import parse_smp
from qmp_server.errors import CommandError

FIXTURES = Path(__file__).resolve().parent.parent / "conformance" / "fixtures"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x2", ("virtio-balloon-pci", "balloon0")),
        ('{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0"}', ("piix3-usb-uhci", "usb")),
        ("driver=e1000,id=a,,b", ("e1000", "a,b")),
        ("vfio-sim", ("vfio-sim", None)),
    ],
)
def test_device_identity(text: str, expected: tuple[str, str | None]) -> None:
    assert device_identity(text) == expected


@pytest.fixture(params=["qemu-7.2", "qemu-10.0"])
def tree(request: pytest.FixtureRequest) -> QomTree:
    devices = [("piix3-usb-uhci", "usb"), ("virtio-balloon-pci", "balloon0"), ("vfio-sim", None)]
    return QomTree(load_model(request.param), "pc", parse_smp("2"), devices)


def test_peripheral_children_in_qemu_order(tree: QomTree) -> None:
    # recorded: type, balloon0, usb (hash-slot order, each prepended)
    assert [p["name"] for p in tree.list("/machine/peripheral")] == ["type", "balloon0", "usb"]
    assert tree.get("/machine/peripheral", "usb") == "/machine/peripheral/usb"


def test_cpus_and_their_topology(tree: QomTree) -> None:
    assert tree.get("/machine/unattached/device[0]", "type") == "qemu64-x86_64-cpu"
    assert tree.get("/machine/unattached/device[2]", "core-id") == 1
    assert tree.get("/machine/unattached/device[2]", "apic-id") == 1
    assert tree.list("/machine/unattached/device[0]")[-1]["name"] != ""
    with pytest.raises(CommandError, match="Device '/machine/unattached/device\\[1\\]' not found"):
        tree.list("/machine/unattached/device[1]")


def test_errors_are_qemus(tree: QomTree) -> None:
    with pytest.raises(CommandError) as err:
        tree.get("/machine/unattached/device[0]", "nope")
    assert (err.value.error_class, err.value.desc) == (
        "GenericError",
        "Property 'qemu64-x86_64-cpu.nope' not found",
    )
    with pytest.raises(CommandError) as err:
        tree.get("/machine/unattached/device[0]", "legacy-memory")
    assert "is not readable" in err.value.desc
    with pytest.raises(CommandError) as err:
        tree.list("/nope")
    assert err.value.error_class == "DeviceNotFound"


def test_balloon_guest_stats(tree: QomTree) -> None:
    stats = tree.get("/machine/peripheral/balloon0", "guest-stats")
    assert stats["last-update"] == 0
    assert stats["stats"]["stat-free-memory"] == 2**64 - 1


def test_default_drives_move_with_the_vcpu_count(tree: QomTree) -> None:
    drives = {d["device"]: d for d in tree.defaults("query-block")}
    # recorded with one vCPU; the second one moves every unattached device up by one
    recorded = {d["device"]: d for d in QomTree(tree.model, "pc", parse_smp("1"), []).defaults(
        "query-block")}
    before = int(recorded["ide1-cd0"]["qdev"].rsplit("[", 1)[1].rstrip("]"))
    assert drives["ide1-cd0"]["qdev"] == f"/machine/unattached/device[{before + 1}]"


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_peripheral_order_as_recorded(version: str) -> None:
    """Eleven -device ids (the table grows once): the order QEMU lists them in."""
    fixture = FIXTURES / f"qemu-{version}" / "domain-start.json"
    scenarios = json.loads(fixture.read_text())["scenarios"]
    scenario = next(sc for sc in scenarios if sc["name"] == "peripheral-order")
    argv = scenario["argv"]
    devices = [device_identity(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]
    recorded = json.loads(scenario["steps"][-1]["lines"][0])["return"]
    tree = QomTree(load_model(f"qemu-{version}"), "pc", parse_smp(None), devices)
    assert tree.list("/machine/peripheral") == recorded
