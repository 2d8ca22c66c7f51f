"""The pure HMP core: parsing, the line editor and a fuzz of the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmp_server.cli import parse_args
from qmp_server.hmp import HMPInterpreter, LineEditor
from qmp_server.hmp.parser import Arg, HMPParseError, Scanner
from qmp_server.hmp.parser import parse_args as parse_hmp
from qmp_server.runtime.runtime import Runtime

FIXTURES = Path(__file__).resolve().parent.parent / "conformance" / "fixtures" / "hmp"


def _interpreter(*argv: str) -> HMPInterpreter:
    options = parse_args(["-M", "pc", "-m", "64", "-nodefaults", *argv])
    assert options is not None
    return Runtime(options).hmp


@pytest.fixture(scope="module", params=["7.2", "default", "8.1", "10.0"])
def hmp(request: pytest.FixtureRequest) -> HMPInterpreter:
    args = [] if request.param == "default" else ["--compat", request.param]
    return _interpreter(*args)


def test_quoted_string_and_flags() -> None:
    spec = (Arg("f", "-", flags="dr", names=("detach", "resume")), Arg("uri", "s"))
    got = parse_hmp("migrate", spec, Scanner(' -d "exec:cat > /dev/null"'))
    assert got == {"detach": True, "uri": "exec:cat > /dev/null"}
    with pytest.raises(HMPParseError, match="unsupported option -b"):
        parse_hmp("migrate", spec, Scanner("-b x"))
    with pytest.raises(HMPParseError, match="string expected"):
        parse_hmp("migrate", spec, Scanner('"unterminated'))


def test_every_profile_answers_the_migration_commands(hmp: HMPInterpreter) -> None:
    assert hmp.run("info status", interactive=False).text == "VM status: running\n"
    assert hmp.run("info migrate", interactive=False).text.startswith("globals:\n")
    params = hmp.run("info migrate_parameters", interactive=False).text
    assert "max-bandwidth: 134217728 bytes/second\n" in params
    assert hmp.run("migrate_set_parameter max-bandwidth 2", interactive=False).text == ""
    params = hmp.run("info migrate_parameters", interactive=False).text
    assert "max-bandwidth: 2097152 bytes/second\n" in params
    caps = hmp.run("info migrate_capabilities", interactive=False).text
    assert "xbzrle: off\n" in caps


def test_8_1_parameters_are_printed_where_the_profile_has_them() -> None:
    text = _interpreter("--compat", "8.1").run("info migrate_parameters", interactive=False).text
    assert "vcpu-dirty-limit: 1 MB/s\n" in text
    assert "compress-level: 1\n" in text


def _echo_cases() -> list[Any]:
    cases = []
    for version in ("7.2", "10.0"):
        with open(FIXTURES / f"qemu-{version}.json", encoding="utf-8") as f:
            data = json.load(f)
        for session in data["sessions"][:2]:
            for step in session["steps"]:
                if step.get("line"):
                    cases.append((step["line"] + "\n", step["output"]))
    return cases


@pytest.mark.parametrize(("typed", "recorded"), _echo_cases()[:40])
def test_line_editor_echo_is_qemus(typed: str, recorded: str) -> None:
    editor = LineEditor()
    echo = ""
    for char in typed:
        out, done = editor.feed_char(char)
        echo += out
        if done:
            break
    assert recorded.startswith(echo)
    assert echo.endswith("\x1b[K\r\n")


_LINES = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(
            [
                "info",
                "migrate",
                "migrate_set_parameter",
                "migrate_set_capability",
                "-d",
                "-b",
                "-r",
                "max-bandwidth",
                "downtime-limit",
                "tls-creds",
                "xbzrle",
                "on",
                "off",
                "1G",
                "-1",
                "0x10",
                '"',
                '"a b"',
                "\\",
                "status",
                "migrate_continue",
                "cont",
                "stop",
                "help",
                "migrate_incoming",
                "multifd-compression",
                "zstd",
                "mode",
                "1e3",
                "1.5k",
                "migrate_cancel",
                "migrate_parameters",
                "ramblock",
                "exec:true",
                "18446744073709551616",
            ]
        ),
        max_size=5,
    ).map(" ".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=_LINES)
def test_fuzz_any_line_gives_text(line: str) -> None:
    """Random lines never raise: they print text (possibly empty) and the VM still answers.
    ``migrate`` lines are skipped: a real migration needs the runtime's event loop."""
    hmp = _FUZZ
    if "migrate " in f"{line} " and not line.lstrip().startswith(("info", "help")):
        first = line.split()[0] if line.split() else ""
        if first == "migrate":
            return
    result = hmp.run(line, interactive=False)
    assert isinstance(result.text, str)
    assert hmp.run("info status", interactive=False).text.startswith("VM status: ")


_FUZZ = _interpreter("--compat", "10.0")


def test_aliases_and_help_list() -> None:
    hmp = _interpreter("--compat", "7.2")
    assert hmp.run("s", interactive=False).text == ""
    assert hmp.run("info status", interactive=False).text == "VM status: paused\n"
    assert hmp.run("c", interactive=False).text == ""
    assert hmp.run("info status", interactive=False).text == "VM status: running\n"
    listing = hmp.run("help", interactive=False).text
    assert listing.startswith("migrate [-d] [-b] [-i] [-r] uri -- ")
    assert "stop|s  -- " in listing
