"""The fleet file's rules (qmp_server/fleet/config.py) and the fleet command line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.errors import UsageError
from qmp_server.fleet.cli import is_fleet_command_line, parse_fleet_command_line
from qmp_server.fleet.config import (
    check_name,
    expand,
    fleet_of_size,
    parse_fleet_file,
    parse_fleet_text,
)

EXAMPLE = """
[fleet]
qmp = "unix:/run/fleet.sock,server=on,wait=off"
link-bandwidth = "125M"

[defaults]
machine = "pc"
m = "1G"
qmp = "unix:/run/{name}.sock,server=on,wait=off"
args = ["-name", "{name}"]

[[vm]]
name = "web{index}"
count = 3
compat = "7.2"
S = true
nodefaults = false

[[vm]]
name = "db"
m = "4G"
device = ["vfio-sim,id=nic0", "virtio-balloon-pci"]
dirty-rate = 1048576
"""


def test_each_vm_gets_the_command_line_of_a_single_process() -> None:
    spec = parse_fleet_text(EXAMPLE)
    assert [vm.name for vm in spec.vms] == ["web0", "web1", "web2", "db"]
    assert spec.vms[1].args == (
        "-machine", "pc", "-m", "1G", "-qmp", "unix:/run/web1.sock,server=on,wait=off",
        "-compat", "7.2", "-S", "-name", "web1",
    )  # fmt: skip
    assert spec.vms[3].args == (
        "-machine", "pc", "-m", "4G", "-qmp", "unix:/run/db.sock,server=on,wait=off",
        "-device", "vfio-sim,id=nic0", "-device", "virtio-balloon-pci",
        "-dirty-rate", "1048576", "-name", "db",
    )  # fmt: skip
    assert spec.process_args == ("-qmp", "unix:/run/fleet.sock,server=on,wait=off")
    assert spec.link == (("link-bandwidth", "125M"),)


def test_indexes_count_within_the_entry_and_across_the_fleet() -> None:
    spec = parse_fleet_text(
        '[[vm]]\nname = "a{index}"\ncount = 2\nargs = ["{fleet_index}"]\n'
        '[[vm]]\nname = "b{index}-{fleet_index}"\ncount = 2\n'
    )
    assert [vm.name for vm in spec.vms] == ["a0", "a1", "b0-2", "b1-3"]
    assert spec.vms[1].args == ("1",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[vm]]\nname = "x"\n[[vm]]\nname = "x"\n', "two VMs are named 'x'"),
        ('[[vm]]\nname = "x"\ncount = 2\n', "2 VMs need '{index}' in their name"),
        ('[[vm]]\nname = "x y"\n', "VM name 'x y' must be"),
        ('[[vm]]\nname = "x"\ncount = 0\n', "'count' must be a positive integer"),
        ('[[vm]]\nname = "x"\nm = {a = 1}\n', "'m' must be a string"),
        ('[[vm]]\nname = "x"\nargs = "-S"\n', "'args' must be a list of strings"),
        ('[[vm]]\nname = "{nom}"\n', "unknown field '{nom}'"),
        ('[fleet]\nm = "1G"\n', "'m' is not a fleet option"),
        ('[defaults]\nname = "x"\n', "[defaults] must be a table without"),
        ("[vms]\n", "unknown table 'vms'"),
        ("[[vm]\n", "fleet.toml: "),
    ],
)
def test_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_fleet_text(text, "fleet.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("fleet.toml: ")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_fleet_or_a_usage_error(text: str) -> None:
    with contextlib.suppress(UsageError):
        parse_fleet_text(text)


_keys = st.sampled_from(["m", "qmp", "compat", "S", "device", "args", "name", "count", "x"])
_values = st.one_of(
    st.text(max_size=20),
    st.integers(-2, 5),
    st.booleans(),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml_lines(table: dict[str, object]) -> str:
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_keys, _values, max_size=5), max_size=4),
       st.dictionaries(_keys, _values, max_size=3))  # fmt: skip
def test_any_table_shape_is_a_fleet_or_a_usage_error(
    entries: list[dict[str, object]], defaults: dict[str, object]
) -> None:
    text = "[defaults]\n" + _toml_lines(defaults)
    for entry in entries:
        text += "[[vm]]\n" + _toml_lines(entry)
    try:
        spec = parse_fleet_text(text)
    except UsageError:
        return
    assert len({vm.name for vm in spec.vms}) == len(spec.vms)
    assert all(isinstance(a, str) for vm in spec.vms for a in vm.args)


def test_expand_knows_three_fields() -> None:
    assert expand("{name}-{index}-{fleet_index}", name="n", index=1, fleet_index=2) == "n-1-2"
    with pytest.raises(ValueError, match="cannot be used"):
        expand("{name}", index=0)
    assert check_name("a.b_c-9") == "a.b_c-9"


def test_the_flag_form() -> None:
    spec = fleet_of_size(2, ["-m", "64M", "-qmp", "unix:/x/{name}.sock,server=on"])
    assert [vm.args for vm in spec.vms] == [
        ("-m", "64M", "-qmp", "unix:/x/vm0.sock,server=on"),
        ("-m", "64M", "-qmp", "unix:/x/vm1.sock,server=on"),
    ]
    with pytest.raises(UsageError, match="positive"):
        fleet_of_size(0, [])


def test_command_line(tmp_path: Path) -> None:
    argv = ["--fleet-size", "2", "--http", "8080", "-qmp", "unix:/f.sock,server=on",
            "--link-bandwidth=1G", "--", "-m", "64M"]  # fmt: skip
    assert is_fleet_command_line(argv)
    assert not is_fleet_command_line(["-m", "64M", "--", "--fleet"])
    line = parse_fleet_command_line(argv)
    assert line.process_args == ("-http", "8080", "-qmp", "unix:/f.sock,server=on")
    assert line.link_bandwidth == "1G"
    assert [vm.args for vm in line.spec.vms] == [("-m", "64M"), ("-m", "64M")]
    with pytest.raises(UsageError, match="not an option of the fleet process"):
        parse_fleet_command_line(["--fleet-size", "2", "-m", "64M"])
    with pytest.raises(UsageError, match="exclude each other"):
        parse_fleet_command_line(["--fleet-size", "2", "--fleet", "x.toml"])
    with pytest.raises(UsageError, match="No such file"):
        parse_fleet_file(str(tmp_path / "missing.toml"))
    path = tmp_path / "f.toml"
    path.write_text('[fleet]\nlink-latency = "2ms"\n[[vm]]\nname = "a"\n')
    line = parse_fleet_command_line(["--fleet", str(path), "--link-latency", "1ms"])
    assert line.link_latency == "1ms"
    assert parse_fleet_command_line(["--fleet", str(path)]).link_latency == "2ms"


def test_the_readme_example_is_a_fleet() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_fleet_text(block, "README.md")
    assert len(spec.vms) == 101
    assert spec.vms[-1].args[-2:] == ("-name", "db")
