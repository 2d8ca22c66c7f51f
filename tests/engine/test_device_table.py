"""``-device`` as QEMU 7.2/10.0 accept and refuse it (texts recorded live, identical in both)."""

from __future__ import annotations

import pytest

from qmp_server.engine.device_table import DeviceError, load_devices, parse_device_option
from qmp_server.profiles import PROFILES

LIBVIRT = [
    "piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2",
    '{"driver":"virtio-balloon-pci","id":"balloon0","bus":"pci.0","addr":"0x3"}',
]


def test_both_forms_parse_alike() -> None:
    kv = parse_device_option("piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2")
    js = parse_device_option(
        '{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0","addr":"0x1.0x2"}'
    )
    assert (kv.driver, kv.id, kv.props) == (js.driver, js.id, js.props)
    assert (kv.json, js.json) == (False, True)
    assert parse_device_option("driver=e1000,netdev=a,,b").props == {"netdev": "a,b"}


@pytest.mark.parametrize("profile", ["7.2", "default", "10.0"])
def test_libvirt_defaults_are_accepted_and_remembered(profile: str) -> None:
    table, configs = load_devices(
        [*LIBVIRT, "vfio-sim,id=nic0,initial-bytes=1M"], PROFILES[profile]
    )
    assert configs[0].id == "nic0"
    assert [d.driver for d in table] == ["piix3-usb-uhci", "virtio-balloon-pci", "vfio-sim"]
    balloon = table.get("balloon0")
    assert balloon is not None and balloon.props == {"bus": "pci.0", "addr": "0x3"}
    assert table.of_driver("piix3-usb-uhci")[0].id == "usb"


REFUSED = [
    (["nope"], "-device nope: 'nope' is not a valid device model name"),
    (['{"driver":"nope"}'], "}: 'nope' is not a valid device model name"),
    (["memory-backend-ram"], "'memory-backend-ram' is not a valid device model name"),
    (["pci-device"], "-device pci-device: Parameter 'driver' expects a non-abstract device type"),
    (["i440FX-pcihost"], "Parameter 'driver' expects a pluggable device type"),
    (["id=x"], "-device id=x: Parameter 'driver' is missing"),
    (['{"id":"x"}'], "Parameter 'driver' is missing"),
    (["piix3-usb-uhci,foo=1"], "Property 'piix3-usb-uhci.foo' not found"),
    (["piix3-usb-uhci,id=1a"], "Parameter 'id' expects an identifier\nIdentifiers consist of"),
    (["piix3-usb-uhci,id=a", "piix3-usb-uhci,id=a"],
     "-device piix3-usb-uhci,id=a: Duplicate ID 'a' for device"),
    (["piix3-usb-uhci,id=a", '{"driver":"piix3-usb-uhci","id":"a"}'],
     "-device {\"driver\":\"piix3-usb-uhci\",\"id\":\"a\"}: Duplicate device ID 'a'"),
    (['{"driver":"piix3-usb-uhci","id":"a"}', "piix3-usb-uhci,id=a"],
     "-device {\"driver\":\"piix3-usb-uhci\",\"id\":\"a\"}: Duplicate device ID 'a'"),
    (['{"driver":"piix3-usb-uhci"'], "JSON parse error, premature EOI"),
    (["vfio-sim"], "-device vfio-sim: Parameter 'id' is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("texts", "message"), REFUSED)
@pytest.mark.parametrize("profile", ["7.2", "10.0"])
def test_refusals_are_qemus(profile: str, texts: list[str], message: str) -> None:
    with pytest.raises(DeviceError) as err:
        load_devices(texts, PROFILES[profile])
    assert message in str(err.value)


def test_short_form_boolean_warns() -> None:
    with pytest.raises(DeviceError) as err:
        load_devices(["piix3-usb-uhci,foo"], PROFILES["7.2"])
    assert err.value.warnings == (
        "-device piix3-usb-uhci,foo: warning: short-form boolean option 'foo' deprecated\n"
        "Please use foo=on instead",
    )
