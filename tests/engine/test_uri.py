"""engine/uri.py: ``uri`` / ``channels`` selection and the channel → URI mapping (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from qmp_server.engine.uri import NEED_URI_OR_CHANNELS, channel_uri, select_uri
from qmp_server.errors import CommandError

UNIX = {"transport": "socket", "type": "unix", "path": "/tmp/m.sock"}


def ch(addr: dict[str, Any], kind: str = "main") -> dict[str, Any]:
    return {"channel-type": kind, "addr": addr}


@pytest.mark.parametrize(
    ("addr", "uri"),
    [
        ({"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "4444"},
         "tcp:127.0.0.1:4444"),
        ({"transport": "socket", "type": "inet", "host": "::1", "port": "4444"},
         "tcp:[::1]:4444"),
        (UNIX, "unix:/tmp/m.sock"),
        ({"transport": "socket", "type": "fd", "str": "migfd"}, "fd:migfd"),
        ({"transport": "exec", "args": ["/bin/sh", "-c", "cat > /tmp/a b"]},
         "exec:/bin/sh -c 'cat > /tmp/a b'"),
        ({"transport": "file", "filename": "/tmp/img", "offset": 0}, "file:/tmp/img"),
        ({"transport": "file", "filename": "/tmp/img", "offset": 4096},
         "file:/tmp/img,offset=4096"),
    ],
)  # fmt: skip
def test_channel_uri(addr: dict[str, Any], uri: str) -> None:
    assert channel_uri(addr) == uri


@pytest.mark.parametrize(
    "addr",
    [{"transport": "rdma", "host": "h", "port": "1"},
     {"transport": "socket", "type": "vsock", "cid": "3", "port": "1"}],
)  # fmt: skip
def test_unmodelled_transports_are_refused(addr: dict[str, Any]) -> None:
    with pytest.raises(CommandError, match="does not model"):
        channel_uri(addr)


@pytest.mark.parametrize("incoming", [False, True])
@pytest.mark.parametrize(
    "args",
    [{}, {"channels": []}, {"uri": "unix:/x", "channels": [ch(UNIX)]}],
)  # fmt: skip
def test_need_either(args: dict[str, Any], incoming: bool) -> None:
    with pytest.raises(CommandError, match=NEED_URI_OR_CHANNELS):
        select_uri(args, incoming=incoming)


def test_uri_with_an_empty_channel_list_is_a_uri_call() -> None:
    assert select_uri({"uri": "unix:/x", "channels": []}, incoming=False) == "unix:/x"


def test_channel_list_rules() -> None:
    def err(channels: list[dict[str, Any]], incoming: bool) -> str:
        with pytest.raises(CommandError) as exc:
            select_uri({"channels": channels}, incoming=incoming)
        return exc.value.desc

    assert err([ch(UNIX), ch(UNIX)], False) == "Channel list has more than one main entry"
    assert err([ch(UNIX), ch(UNIX, "cpr"), ch(UNIX, "cpr")], False) == (
        "Channel list has more than one cpr entry")
    assert err([ch(UNIX, "cpr")], False) == "Channel list has no main entry"
    assert err([ch(UNIX), ch(UNIX, "cpr")], True) == (
        "Channel list must have only one entry, for type 'main'")
    # migrate ignores a cpr channel; migrate-incoming uses its single channel whatever its type
    assert select_uri({"channels": [ch(UNIX, "cpr"), ch(UNIX)]}, incoming=False) == (
        "unix:/tmp/m.sock")
    assert select_uri({"channels": [ch(UNIX, "cpr")]}, incoming=True) == "unix:/tmp/m.sock"
