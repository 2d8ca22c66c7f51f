"""The object model answers as the recorded QEMU 7.2 and 10.0 (tools/record_object_model.py).

Derived answers (type lists filtered by ``implements``/``abstract``, one command-line option,
CPU expansions with ``props``) are compared with real answers recorded for the same arguments.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from qmp_server.engine.device_table import device_catalog
from qmp_server.engine.object_model import ObjectModel, data_version, object_model
from qmp_server.errors import CommandError
from qmp_server.profiles import PROFILES
from qmp_server.wire.encoder import encode

VERSIONS = {"7.2": PROFILES["7.2"], "10.0": PROFILES["10.0"]}


def _model(version: str) -> ObjectModel:
    return object_model(VERSIONS[version])


def _ask(model: ObjectModel, command: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        if command == "qom-list-types":
            ret = model.qom_list_types(args.get("implements"), args.get("abstract", False))
        elif command == "query-command-line-options":
            ret = model.command_line_options(args.get("option"))
        else:
            ret = model.cpu_model_expansion(args["type"], args["model"])
    except CommandError as err:
        return {"error": {"class": err.error_class, "desc": err.desc}}
    return {"return": ret}


def _wire(reply: dict[str, Any]) -> str:
    """How the server prints an answer (``{"return": ...}``: one key, order moot)."""
    return encode(reply)


def test_profiles_map_to_recordings() -> None:
    assert [data_version(p) for p in PROFILES.values()] == ["7.2", "7.2", "7.2", "10.0"]


@pytest.mark.parametrize("version", VERSIONS)
def test_derived_answers_are_qemus(version: str) -> None:
    model = _model(version)
    checks = model.data["checks"]
    assert len(checks) >= 10
    for command, args, reply in checks:
        assert _wire(_ask(model, command, args)) == json.dumps(reply), (command, args)


#: Where the overlay rule misses on libvirt's full expansion of a static result (the recorded
#: answer is served verbatim for those requests): an alias it cannot derive, a 10.0 level.
OVERLAY_GAPS = {"i64", "level-func7"}


@pytest.mark.parametrize("version", VERSIONS)
def test_cpu_props_overlay_matches_recorded_answers(version: str) -> None:
    model = _model(version)
    recorded = model.data["cpu-model-expansion-props"]
    model.data["cpu-model-expansion-props"] = []  # force the overlay rule
    try:
        for args, reply in recorded:
            ours = _ask(model, "query-cpu-model-expansion", args)
            if args["model"]["name"] != "base":
                assert _wire(ours) == json.dumps(reply), args
                continue
            a, b = ours["return"]["model"]["props"], reply["return"]["model"]["props"]
            assert list(reversed(a)) == list(b)
            assert {k for k in a if a[k] != b[k]} <= OVERLAY_GAPS
    finally:
        model.data["cpu-model-expansion-props"] = recorded
    for args, reply in recorded:  # served verbatim
        assert _wire(_ask(model, "query-cpu-model-expansion", args)) == json.dumps(reply)


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_names_get_qemus_errors(version: str) -> None:
    model = _model(version)
    with pytest.raises(CommandError) as err:
        model.device_list_properties("virtio-net-ccw")
    assert (err.value.error_class, err.value.desc) == (
        "DeviceNotFound",
        "Device 'virtio-net-ccw' not found",
    )
    with pytest.raises(CommandError) as err:
        model.qom_list_properties("bogus")
    assert err.value.desc == "Class 'bogus' not found"
    with pytest.raises(CommandError) as err:
        model.device_list_properties("device")
    assert err.value.desc == "Parameter 'typename' expects a non-abstract device type"
    with pytest.raises(CommandError) as err:
        model.command_line_options("bogus")
    assert err.value.desc == "invalid option name: bogus"
    with pytest.raises(CommandError) as err:
        model.cpu_model_expansion("static", {"name": "bogus"})
    assert err.value.desc == "CPU model 'bogus' not found"
    with pytest.raises(CommandError) as err:
        model.cpu_model_expansion("full", {"name": "qemu64", "props": {"zz": True}})
    assert err.value.desc == "Property 'qemu64-x86_64-cpu.zz' not found"


@pytest.mark.parametrize("version", VERSIONS)
def test_libvirt_probe_types(version: str) -> None:
    model = _model(version)
    for name in ("memory-backend-file", "memory-backend-memfd", "max-x86_64-cpu", "none-machine"):
        assert any(p["name"] == "type" for p in model.qom_list_properties(name))
    props = model.device_list_properties("virtio-balloon-pci")
    assert any(p["name"] == "deflate-on-oom" for p in props)
    assert model.reply("query-target") == {"arch": "x86_64"}


@pytest.mark.parametrize("version", VERSIONS)
def test_device_catalog_is_derived_from_the_recording(version: str) -> None:
    catalog = device_catalog(VERSIONS[version])
    assert {"version": catalog.version, "devices": catalog.devices} == (
        _model(version).device_catalog()
    )
    assert catalog.check("piix3-usb-uhci") is None
    assert catalog.check("virtio-balloon-pci") is None
    assert catalog.check("nope") == "'nope' is not a valid device model name"
    assert catalog.check("memory-backend-ram") == (
        "'memory-backend-ram' is not a valid device model name"
    )
    assert catalog.check("pci-device") == "Parameter 'driver' expects a non-abstract device type"
    assert catalog.check("i440FX-pcihost") == "Parameter 'driver' expects a pluggable device type"
    assert "addr" in catalog.property_names("piix3-usb-uhci")


@pytest.mark.parametrize("version", VERSIONS)
def test_device_help_texts(version: str) -> None:
    model = _model(version)
    samples = model.data["device_help_samples"]
    assert len(samples) >= 10
    for driver, text in samples.items():
        if text:
            assert model.device_help(driver) == text, driver
        else:  # QEMU 10.0 here lacks the qxl module: it prints an error instead
            with pytest.raises(CommandError, match="not found"):
                model.device_help(driver)
    assert model.device_help().startswith("Controller/Bridge/Hub devices:\n")
    with pytest.raises(CommandError, match="Device 'nope' not found"):
        model.device_help("nope")
