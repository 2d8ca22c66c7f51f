"""Hostile-input differential fuzzing: the same bytes to a live QEMU 7.2 and to qmp-server.

One ``qemu-system-x86_64`` and one ``python -m qmp_server --compat 7.2`` run per module.  For
each example hypothesis builds a QMP byte stream from a grammar of fragments (well-formed and
broken JSON, single quotes, escapes including ``\\u`` surrogates and noncharacters, raw and
invalid UTF-8, control characters, 0xFF, deep nesting, numbers of every shape, ids of every
type, request shapes with ``execute``/``exec-oob``/``arguments``/unknown members, commands from
a SAFE list or bogus names).  Both targets get the bytes on a fresh connection, followed by a
*sync*: a 0xFF byte and ``{"execute":"query-status","id":"sync-<random>"}``.  The reply lines
up to the sync reply must be identical after masking event timestamps and the version/package.

Why a 0xFF resync is safe after any prefix: 0xFF can never appear in valid UTF-8, so QEMU's
lexer treats it as an error in *every* state (between tokens, inside a string, after a number
or keyword, in error recovery); an error token makes the streamer drop everything queued, and
``{`` then starts from a clean lexer and an empty parser.  Whatever the prefix left behind (a
half string, an open object 1000 levels deep, a pending number), the sync request is parsed
alone, so both targets must answer it and we know where the prefix's replies end.  The one
prefix that could swallow it is a token or nesting limit breach in progress, which the grammar
keeps far away from (inputs are a few KiB).

Commands are restricted to ones that cannot stop the VM or start a migration.  As a belt and
braces guard, every string token of the input is decoded and any name of a QEMU command
outside the SAFE list rejects the example (so no combination of fragments can spell ``quit``).
Migration capability/parameter state changed by an example is compared between the two
targets, then reset to the start-up values; if the two disagree the example fails and both
processes are restarted, so one bug does not leak into later examples.

Two QEMU 7.2 behaviours shape the harness (both found by this test): with OOB enabled, objects
with ``exec-oob`` are answered at once by QEMU's I/O thread and may overtake queued replies
(then only the multiset of replies is compared), and more than 8 queued in-band messages with
OOB on abort QEMU (an assertion in ``handle_qmp_command``; such inputs are not sent).

Knobs: ``QMP_FUZZ_EXAMPLES`` (default 150), ``QMP_FUZZ_SEED`` (default: derandomized, so CI
runs the same examples every time; set a number to explore other inputs), ``QMP_FUZZ_LOG``
(append every input sent to this file), ``QMP_FUZZ_NOSHRINK=1`` (report the first failure
as found; shrinking against live processes can take minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, seed, settings
from hypothesis import strategies as st

from qmp_server.wire.lexer import JSONLexer, TokenType
from qmp_server.wire.parser import JSONStreamer, _Fail, _parse_string

from . import _harness as h

pytestmark = pytest.mark.live_qemu

QEMU = os.environ.get("QMP_SERVER_QEMU") or shutil.which("qemu-system-x86_64")
if QEMU is None:
    pytest.skip("qemu-system-x86_64 not installed", allow_module_level=True)

MAX_EXAMPLES = int(os.environ.get("QMP_FUZZ_EXAMPLES", "150"))
FUZZ_SEED = os.environ.get("QMP_FUZZ_SEED")
LOG = os.environ.get("QMP_FUZZ_LOG")
ARGV = ["-machine", "none", "-nodefaults", "-display", "none"]
#: Seconds to wait for the next reply line before declaring a hang.
READ_TIMEOUT = 10.0

SAFE_COMMANDS = [
    "query-status",
    "query-version",
    "query-migrate-capabilities",
    "query-migrate-parameters",
    "migrate-set-capabilities",
    "migrate-set-parameters",
    "qmp_capabilities",
]
#: Never sent, whatever the grammar builds (checked on the decoded string tokens).
ALWAYS_FORBIDDEN = {
    "quit",
    "stop",
    "cont",
    "migrate",
    "migrate_cancel",
    "migrate-continue",
    "migrate-incoming",
    "migrate-recover",
    "migrate-pause",
    "system_reset",
    "system_powerdown",
    "system_wakeup",
    "x-exit-preconfig",
    "xen-save-devices-state",
    "snapshot-save",
    "dump-guest-memory",
}
BOGUS_COMMANDS = [
    "query-bogus",
    "",
    "Query-Status",
    "query_status",
    "query-status ",
    " query-status",
    "qmp-capabilities",
    "QMP_CAPABILITIES",
    "query-\u00e9",
    "zz\u2603",
    "x-bogus",
    "\u0000",
]

# --------------------------------------------------------------------------------------------
# The two processes
# --------------------------------------------------------------------------------------------


class Conn:
    """A raw client: bytes out, ``\\r\\n``-terminated lines in (kept raw)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                select.select([], [self.sock], [], READ_TIMEOUT)
                continue
            view = view[n:]

    def _fill(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return True
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk
        return True

    def line(self, timeout: float = READ_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            if self.eof:
                rest, self.buf = self.buf, b""
                return b"<EOF>" + rest
            left = deadline - time.monotonic()
            if left <= 0 or not self._fill(left):
                return b"<TIMEOUT>"
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def lines_until(self, marker: bytes, limit: int = 5000) -> list[bytes]:
        out = []
        while len(out) < limit:
            line = self.line()
            out.append(line)
            if marker in line or line.startswith((b"<EOF>", b"<TIMEOUT>")):
                return out
        out.append(b"<TOO MANY LINES>")
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Died(RuntimeError):
    """A target process is gone."""


class Side:
    """One target process (QEMU or qmp-server) and its socket."""

    def __init__(self, target: h.Target, sock: str) -> None:
        self.target = target
        self.sock = sock
        self.proc: h.Process | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        self.proc = h.Process(self.target, ARGV, self.sock)
        self.proc.wait_socket()
        time.sleep(self.target.connect_grace)

    def stop(self) -> str:
        """Kill the process (idempotent: a second call does nothing)."""
        proc, self.proc = self.proc, None
        return proc.stop() if proc is not None else ""

    def connect(self) -> tuple[Conn, bytes]:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = Conn(self.sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc is not None and self.proc.proc.poll() is not None:
                    raise Died(
                        f"{self.target.kind} exited with {self.proc.proc.poll()}; "
                        f"stderr: {self.proc.stderr()[-3000:]!r}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        return conn, conn.line()


class Pair:
    def __init__(self, tmp: str) -> None:
        self.qemu = Side(h.qemu_target(QEMU), os.path.join(tmp, "qemu.sock"))
        self.ours = Side(h.qmp_server_target("7.2"), os.path.join(tmp, "ours.sock"))
        self.forbidden: set[str] = set(ALWAYS_FORBIDDEN)
        self.initial_caps: list[dict[str, Any]] = []
        self.initial_params: dict[str, Any] = {}
        self.history: deque[bytes] = deque(maxlen=3)

    def start(self) -> None:
        self.qemu.start()
        self.ours.start()

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        try:
            self.qemu.stop()
        finally:
            self.ours.stop()

    def command(self, side: Side, requests: list[bytes]) -> list[bytes]:
        """Negotiate on a fresh connection, send ``requests`` one by one, return the replies."""
        conn, _ = side.connect()
        try:
            conn.send(b'{"execute":"qmp_capabilities"}')
            conn.line()
            replies = []
            for req in requests:
                conn.send(req)
                replies.append(conn.line())
            return replies
        finally:
            conn.close()

    def learn(self) -> None:
        """Read QEMU's command list and the start-up migration state (for guards and reset)."""
        cmds, caps, params = self.command(
            self.qemu,
            [
                b'{"execute":"query-commands"}',
                b'{"execute":"query-migrate-capabilities"}',
                b'{"execute":"query-migrate-parameters"}',
            ],
        )
        names = {c["name"] for c in json.loads(cmds)["return"]}
        self.forbidden |= names - set(SAFE_COMMANDS)
        self.initial_caps = json.loads(caps)["return"]
        self.initial_params = json.loads(params)["return"]

    def state(self, side: Side) -> list[bytes]:
        return self.command(
            side,
            [
                b'{"execute":"query-migrate-capabilities"}',
                b'{"execute":"query-migrate-parameters"}',
            ],
        )

    def reset(self, side: Side) -> list[bytes]:
        caps = [{"capability": c["capability"], "state": False} for c in self.initial_caps]
        params = dict(self.initial_params)
        return self.command(
            side,
            [
                json.dumps(
                    {"execute": "migrate-set-capabilities", "arguments": {"capabilities": caps}}
                ).encode(),
                json.dumps({"execute": "migrate-set-parameters", "arguments": params}).encode(),
            ],
        )


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with h.tmp_socket_dir() as tmp:
        p = Pair(tmp)
        try:
            p.start()
            p.learn()
            yield p
        finally:
            p.stop()


# --------------------------------------------------------------------------------------------
# The grammar
# --------------------------------------------------------------------------------------------

WS = st.sampled_from([b"", b"", b"", b" ", b"\n", b"\r\n", b"\t", b"  \r\n "])

# Decoded strings are either from fixed, harmless pools or start with "zz", so no string a
# fragment can carry is a command name (the token guard below double-checks).
_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=["Cs"]),
    max_size=8,
)
_KEYS = [
    "execute",
    "exec-oob",
    "arguments",
    "id",
    "exec",
    "foo",
    "control",
    "ID",
    "Execute",
    "capabilities",
    "capability",
    "state",
    "enable",
    "x",
    "",
]
PLAIN_STRINGS = st.one_of(
    st.sampled_from(
        [
            *_KEYS,
            "oob",
            "abc",
            "sync",
            "\u00e9\u0001/\t\u2603\U0001f600",
            "a'b",
            'a"b',
            "back\\slash",
            "\u0000",
            "\ufffd",
            "\x7f",
            "\u0080\u00ff",
        ]
    ),
    _TEXT.map(lambda s: "zz" + s),
)

# Pieces inserted verbatim into a string body: valid but exotic ones, and invalid ones.
EXOTIC_STRING_PIECES = [
    b"\\u00e9",
    b"\\u00E9",
    b"\\uD83D\\uDE00",
    b"\\ud83d\\ude00",
    b"\\u0000",
    b"\\'",
    b'\\"',
    b"\\/",
    b"\\b\\f\\n\\r\\t",
    b"\\u007f",
    b"\\u001F",
    b"\xc3\xa9",
    b"\xe2\x98\x83",
    b"\xf0\x9f\x98\x80",
    b"\xef\xbf\xbd",
    b"\xf4\x8f\xbf\xbd",
    b"\x7f",
    b"\\\\",
]
BAD_STRING_PIECES = [
    b"\\x",
    b"\\u12",
    b"\\uD800",
    b"\\udbff",
    b"\\uDE00",
    b"\\ud83d\\u0041",
    b"\\uFFFF",
    b"\\uFFFE",
    b"\\uFDD0",
    b"\\uFDEF",
    b"\\uD800\\uD800",
    b"\\U0041",
    b"\\u",
    b"\x80",
    b"\xc3",
    b"\xc3(",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xef\xbf\xbf",
    b"\xef\xbf\xbe",
    b"\xef\xb7\x90",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xfc\x84\x80\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\x01",
    b"\x1f",
    b"\t",
    b"\n",
    b"\x00",
]


@st.composite
def json_string(draw: Any, value: Any = None, hostile: bool = True) -> bytes:
    """A string token: the decoded ``value`` (or a drawn one), each char encoded at random."""
    text = draw(PLAIN_STRINGS) if value is None else value
    if not hostile:
        text = "".join(ch for ch in text if ord(ch) >= 0x20) if value is None else text
    quote = draw(st.sampled_from(['"', '"', '"', "'"]))
    out = []
    for ch in text:
        mode = draw(st.integers(0, 9))
        cp = ord(ch)
        if ch == quote or ch == "\\":
            out.append(("\\" + ch).encode())
        elif mode == 0 or cp < 0x20:
            if cp > 0xFFFF:
                v = cp - 0x10000
                pair = (0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
                out.append(b"".join(b"\\u%04x" % p for p in pair))
            else:
                fmt = draw(st.sampled_from([b"\\u%04x", b"\\u%04X"]))
                out.append(fmt % cp)
        else:
            out.append(ch.encode("utf-8"))
    body = b"".join(out)
    if value is None and draw(st.integers(0, 3)) == 0:
        pos = draw(st.integers(0, len(body)))
        body = body[:pos] + draw(st.sampled_from(EXOTIC_STRING_PIECES)) + body[pos:]
    if hostile and draw(st.integers(0, 5)) == 0:
        pos = draw(st.integers(0, len(body)))
        body = body[:pos] + draw(st.sampled_from(BAD_STRING_PIECES)) + body[pos:]
    q = quote.encode()
    if hostile and draw(st.integers(0, 30)) == 0:
        return q + body  # unterminated
    return q + body + q


VALID_NUMBERS = [
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"1e3",
    b"1E+3",
    b"-0.0",
    b"0.1",
    b"1.5e400",
    b"-1e400",
    b"1e-400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"1.7976931348623157e308",
    b"5e-324",
    b"1.5",
    b"2.5e-3",
    b"100000000000000000000.0",
    b"1e22",
    b"1e21",
    b"0e0",
    b"4294967296",
    b"-4294967297",
    b"255",
    b"256",
    b"65536",
    b"1.0",
    b"2000",
    b"2001",
    b"4294967295",
    b"-1.5",
    b"1e2",
    b"100.0",
    b"0.5e1",
]
INVALID_NUMBERS = [
    b"01",
    b"-01",
    b"00",
    b"1.",
    b"1.e3",
    b".5",
    b"-",
    b"+1",
    b"1e",
    b"1e+",
    b"1E-",
    b"0x10",
    b"1_0",
    b"--1",
    b"1-2",
    b"1.5.5",
    b"1e5e5",
]
_NUMBER_VALUES = st.one_of(
    st.sampled_from(VALID_NUMBERS),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: b"%.3e" % f),
)
NUMBERS = st.one_of(_NUMBER_VALUES, st.sampled_from(INVALID_NUMBERS))
CLEAN_NUMBERS = _NUMBER_VALUES.filter(lambda b: b"inf" not in b)
KEYWORDS = st.sampled_from(
    [b"true", b"false", b"null", b"tru", b"nul", b"foo", b"True", b"NULL", b"nan", b"Infinity"]
)
CLEAN_KEYWORDS = st.sampled_from([b"true", b"false", b"null"])


def _join_members(draw: Any, pairs: list[tuple[bytes, bytes]], hostile: bool = True) -> bytes:
    parts = []
    for k, v in pairs:
        ws = draw(WS)
        colons = [b":", b":", b":", b": ", b" : "] + ([b"", b"::"] if hostile else [])
        colon = (
            draw(st.sampled_from(colons))
            if hostile and draw(st.integers(0, 6)) == 0
            else (draw(st.sampled_from(colons[:5])))
        )
        parts.append(ws + k + colon + draw(WS) + v)
    seps = [b",", b",", b",", b", ", b",\r\n"]
    sep = (
        draw(st.sampled_from([*seps, b"", b",,"]))
        if hostile and draw(st.integers(0, 6)) == 0
        else draw(st.sampled_from(seps))
    )
    body = sep.join(parts)
    if hostile and parts and draw(st.integers(0, 20)) == 0:
        body += b","  # trailing comma
    close = b"}" if not hostile or draw(st.integers(0, 25)) else b"]"
    return b"{" + body + draw(WS) + close


@st.composite
def json_value(draw: Any, depth: int = 3, hostile: bool = True) -> bytes:
    """Any JSON-ish value: scalars, arrays and objects; broken ones only when ``hostile``."""
    kind = draw(st.integers(0, 9 if depth > 0 else 5))
    if kind <= 2:
        return draw(json_string(hostile=hostile))
    if kind <= 4:
        return draw(NUMBERS if hostile else CLEAN_NUMBERS)
    if kind == 5:
        return draw(KEYWORDS if hostile else CLEAN_KEYWORDS)
    if kind <= 7:
        items = [draw(json_value(depth - 1, hostile)) for _ in range(draw(st.integers(0, 4)))]
        seps = [b",", b", ", b",", b",\n"]
        sep = draw(st.sampled_from(seps + ([b""] if hostile else [])))
        close = b"]" if not hostile or draw(st.integers(0, 15)) else b""
        return b"[" + draw(WS) + sep.join(items) + draw(WS) + close
    pairs = [
        (draw(json_string(hostile=hostile)), draw(json_value(depth - 1, hostile)))
        for _ in range(draw(st.integers(0, 4)))
    ]
    if pairs and draw(st.integers(0, 15)) == 0:
        pairs.append(pairs[0])  # duplicate key
    return _join_members(draw, pairs, hostile)


JSON_VALUE = json_value()
CLEAN_VALUE = json_value(hostile=False)


@st.composite
def command_args(draw: Any, name: str, caps: list[str], params: list[str], hostile: bool) -> bytes:
    value = JSON_VALUE if hostile else CLEAN_VALUE

    def string(v: Any) -> Any:
        return json_string(v, hostile=hostile)

    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(value)
    if choice == 1:
        return draw(st.sampled_from([b"null", b"[]", b"{}", b'"x"', b"1"]))
    if name == "migrate-set-capabilities":
        items = []
        for _ in range(draw(st.integers(0, 3))):
            members = []
            if draw(st.integers(0, 8)):
                cap = draw(
                    st.one_of(
                        st.sampled_from(caps),
                        st.sampled_from(caps),
                        st.sampled_from(["bogus", ""]),
                        PLAIN_STRINGS,
                    )
                )
                members.append((b'"capability"', draw(string(cap))))
            if draw(st.integers(0, 8)):
                members.append(
                    (
                        b'"state"',
                        draw(
                            st.one_of(
                                st.sampled_from([b"true", b"false"]),
                                st.sampled_from([b"true", b"false"]),
                                value,
                            )
                        ),
                    )
                )
            if draw(st.integers(0, 10)) == 0:
                members.append((draw(json_string(hostile=hostile)), draw(value)))
            members = draw(st.permutations(members))
            items.append(
                _join_members(draw, members, hostile) if draw(st.integers(0, 12)) else draw(value)
            )
        caps_value = b"[" + b",".join(items) + b"]"
        if draw(st.integers(0, 10)) == 0:
            caps_value = draw(value)
        return _join_members(draw, [(b'"capabilities"', caps_value)], hostile)
    if name == "migrate-set-parameters":
        members = []
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.one_of(st.sampled_from(params), st.sampled_from(params), PLAIN_STRINGS))
            item = draw(
                st.one_of(
                    NUMBERS if hostile else CLEAN_NUMBERS,
                    st.sampled_from(
                        [
                            b"0",
                            b"1",
                            b"2",
                            b"100",
                            b"255",
                            b"256",
                            b"-1",
                            b"1.5",
                            b"18446744073709551615",
                            b"9223372036854775807",
                            b"2000",
                            b"2001",
                            b"1000000",
                            b"3",
                        ]
                    ),
                    CLEAN_KEYWORDS,
                    string(None),
                    st.sampled_from(
                        [
                            b'"none"',
                            b'"zlib"',
                            b'"zstd"',
                            b'"lz4"',
                            b'""',
                            b"[]",
                            b"{}",
                            b'"tls0"',
                            b'[{"node-name":"n","alias":"a","bitmaps":[]}]',
                            b'[{"node-name":"n","alias":"a","bitmaps":[],"x":1}]',
                        ]
                    ),
                    value,
                )
            )
            members.append((draw(string(key)), item))
        if members and draw(st.integers(0, 15)) == 0:
            members.append(members[0])  # duplicate key
        return _join_members(draw, members, hostile)
    if name == "qmp_capabilities":
        return draw(
            st.sampled_from(
                [
                    b"{}",
                    b'{"enable":["oob"]}',
                    b'{"enable":[]}',
                    b'{"enable":["foo"]}',
                    b'{"enable":"oob"}',
                    b'{"enable":null}',
                    b'{"enable":["oob","oob"]}',
                    b'{"enable":[1]}',
                    b'{"foo":1}',
                    b'{"enable":["oob"],"x":1}',
                    b"{'enable':['oob']}",
                    b'{"enable":[null]}',
                    b'{"enable":{}}',
                    b'{"enable":["foo","oob"]}',
                ]
            )
        )
    return draw(st.sampled_from([b"{}", b'{"x":1}', b'{"a":{}}', b'{"x":null}']))


@st.composite
def request(draw: Any, caps: list[str], params: list[str]) -> bytes:
    hostile = draw(st.integers(0, 9)) < 3
    value = JSON_VALUE if hostile else CLEAN_VALUE
    name = draw(
        st.one_of(
            st.sampled_from(SAFE_COMMANDS),
            st.sampled_from(SAFE_COMMANDS),
            st.sampled_from(BOGUS_COMMANDS),
        )
    )
    name_tok = (
        draw(json_string(name, hostile=hostile))
        if draw(st.integers(0, 12))
        else draw(
            st.one_of(
                NUMBERS, KEYWORDS, st.just(b"{}"), st.just(b"[]"), st.just(b'["query-status"]')
            )
        )
    )
    members: list[tuple[bytes, bytes]] = []
    which = draw(st.sampled_from(["execute"] * 8 + ["exec-oob", "both", "none"]))
    if which in ("execute", "both"):
        members.append((draw(json_string("execute", hostile=hostile)), name_tok))
    if which in ("exec-oob", "both"):
        members.append((draw(json_string("exec-oob", hostile=hostile)), name_tok))
    if draw(st.integers(0, 2)):
        members.append(
            (
                draw(json_string("arguments", hostile=hostile)),
                draw(command_args(name, caps, params, hostile)),
            )
        )
    if draw(st.integers(0, 2)):
        members.append((draw(json_string("id", hostile=hostile)), draw(value)))
    for _ in range(draw(st.sampled_from([0] * 8 + [1, 2]))):
        key = draw(st.sampled_from(["exec", "foo", "control", "ID", "Execute", "id", "execute"]))
        members.append((draw(json_string(key, hostile=hostile)), draw(value)))
    members = draw(st.permutations(members))
    return _join_members(draw, members, hostile)


RAW_FRAGMENTS = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"\xff",
        b"\xfe",
        b"\x00",
        b"\x01",
        b"\x1b",
        b"\x7f",
        b"\r\n",
        b"\n",
        b"\t",
        b"\xef\xbb\xbf",
        b"@",
        b"%",
        b"#",
        b"'",
        b'"',
        b"\\",
        b"\x80",
        b"\xc3\xa9",
        b"{{",
        b"}}",
        b"[[[",
        b"]]]",
        b"{}",
        b"[]",
        b'{"a":',
        b'{"execute":',
        b"1",
        b"-",
        b"tru",
        b"0",
        b"1e",
        b"\x1f",
        b"\x7f{}",
        b"  ",
        b"[" * 1024 + b"]" * 1024,
        b"[" * 1025,
        b"{" * 30,
        b"[" * 1023 + b"{}" + b"]" * 1023,
    ]
)


@st.composite
def stream(draw: Any, caps: list[str], params: list[str]) -> bytes:
    prefix = draw(
        st.sampled_from(
            [
                b"",
                b"",
                b'{"execute":"qmp_capabilities"}',
                b'{"execute":"qmp_capabilities"}',
                b'{"execute":"qmp_capabilities"}\r\n',
                b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}',
            ]
        )
    )
    pieces = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 11))
        if kind <= 6:
            piece = draw(request(caps, params))
        elif kind == 7:
            piece = draw(JSON_VALUE)
        elif kind == 8:
            full = draw(request(caps, params))
            piece = full[: draw(st.integers(0, len(full)))]  # truncated
        else:
            piece = draw(RAW_FRAGMENTS)
        pieces.append(piece)
        pieces.append(draw(WS))
    return prefix + b"".join(pieces)


# --------------------------------------------------------------------------------------------
# The differential check
# --------------------------------------------------------------------------------------------


def decoded_strings(data: bytes) -> list[str]:
    """Every string token of ``data`` as QEMU would decode it (undecodable ones skipped)."""
    found: list[bytes] = []
    lexer = JSONLexer(lambda t, text: found.append(text) if t == TokenType.STRING else None)
    lexer.feed(data)
    out = []
    for text in found:
        with contextlib.suppress(_Fail):
            out.append(_parse_string(text))
    return out


def converse(side: Side, data: bytes, sync_id: str) -> list[str]:
    conn, greeting = side.connect()
    try:
        conn.send(data + b'\xff{"execute":"query-status","id":"' + sync_id.encode() + b'"}')
        lines = [greeting, *conn.lines_until(b'"id": "' + sync_id.encode() + b'"')]
    finally:
        conn.close()
    return [h.mask_line(ln.decode("latin-1")) for ln in lines]


def same_replies(a: list[str], b: list[str], strings: list[str]) -> bool:
    if a == b:
        return True
    # With OOB enabled, QEMU runs every object with "exec-oob" (and no "execute") at once in
    # its I/O thread, while in-band requests and parse errors wait in a queue for the main
    # loop: such replies may overtake earlier ones, by timing.  Only the multiset is defined.
    return "exec-oob" in strings and sorted(a) == sorted(b)


def may_crash_qemu(data: bytes, strings: list[str]) -> bool:
    """QEMU 7.2 aborts with more than 8 in-band messages queued while OOB is on.

    ``handle_qmp_command: Assertion `mon->qmp_requests->length < QMP_REQ_QUEUE_LEN_MAX'
    failed``: with OOB enabled the monitor suspends itself when the 8th request is queued,
    but one input byte can complete two messages (``1}``: the number, then the stray ``}``),
    and parse errors count as requests.  Found by this test; not something to emulate, so
    inputs that could enable OOB and produce more than 8 messages are not sent.
    """
    if "oob" not in strings:
        return False
    return len(JSONStreamer().feed(data + b"\xff" + SYNC_PROBE)) > 8


SYNC_PROBE = b'{"execute":"query-status","id":"sync-000000000000"}'


def check(pair: Pair, data: bytes) -> None:
    strings = decoded_strings(data)
    if any(s in pair.forbidden for s in strings) or may_crash_qemu(data, strings):
        assume(False)
    if any(
        side.proc is None or side.proc.proc.poll() is not None for side in (pair.qemu, pair.ours)
    ):
        pair.restart()  # a previous example killed one (and failed): start clean
        pair.learn()
    pair.history.append(data)
    if LOG:
        with open(LOG, "a") as f:
            f.write(repr(data) + "\n")
    try:
        problems = _compare(pair, data, strings)
    except Died as err:
        recent = "\n".join(repr(d) for d in pair.history)
        problems = [f"{err}\nlast inputs (this one last):\n{recent}"]
    if problems:
        pair.restart()
        pair.learn()
        pytest.fail(f"input {data!r}\n" + "\n".join(problems), pytrace=False)


def _compare(pair: Pair, data: bytes, strings: list[str]) -> list[str]:
    sync_id = "sync-" + uuid.uuid4().hex[:12]
    theirs = converse(pair.qemu, data, sync_id)
    ours = converse(pair.ours, data, sync_id)
    problems = []
    if not same_replies(theirs, ours, strings):
        problems.append(
            "replies differ:\n  QEMU:\n    "
            + "\n    ".join(theirs)
            + "\n  qmp-server:\n    "
            + "\n    ".join(ours)
        )
    state_q, state_o = pair.state(pair.qemu), pair.state(pair.ours)
    if state_q != state_o:
        problems.append(
            f"migration state differs afterwards:\n  QEMU: {state_q}\n  qmp-server: {state_o}"
        )
    for side in (pair.qemu, pair.ours):
        if side.proc is not None and side.proc.proc.poll() is not None:
            problems.append(f"{side.target.kind} died: {side.proc.stderr()[-2000:]}")
    if not problems and any(s.startswith("migrate-set") for s in strings):
        reset_q, reset_o = pair.reset(pair.qemu), pair.reset(pair.ours)
        if reset_q != reset_o or pair.state(pair.qemu) != pair.state(pair.ours):
            problems.append(f"reset differs: QEMU {reset_q}, qmp-server {reset_o}")
    return problems


_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=FUZZ_SEED is None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("QMP_FUZZ_NOSHRINK")],
)


def _seeded(fn: Any) -> Any:
    return seed(int(FUZZ_SEED))(fn) if FUZZ_SEED is not None else fn


@pytest.fixture(scope="module")
def grammar(pair: Pair) -> Any:
    caps = [c["capability"] for c in pair.initial_caps]
    params = [*sorted(pair.initial_params), "block-bitmap-mapping", "tls-authz", "bogus"]
    return stream(caps, params)


# Edge inputs checked live, run first on every run (``@example``).  None of them showed a
# difference in qmp-server; the last one is the minimal form of the OOB overtaking that
# ``same_replies`` tolerates (QEMU answered the exec-oob object before the stray '%').
REGRESSIONS: list[bytes] = [
    b"1",
    b'{"a":1',
    b'"abc',
    b"1\xc3\xa9",
    b'\xef\xbb\xbf{"execute":"query-status"}',
    b"[" * 1025,
    b"[" * 1024 + b"]" * 1024,
    b"1}",
    b'"\\uD83D\\uDE00\\u00e9\x7f"',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}%{"exec-oob":1,"id":2}',
]


def _with_regressions(fn: Any) -> Any:
    for data in reversed(REGRESSIONS):
        fn = example(data=data)(fn)
    return fn


def test_live_differential(pair: Pair, grammar: Any) -> None:
    """Random hostile streams: qmp-server answers exactly as QEMU 7.2 does."""

    @_seeded
    @_SETTINGS
    @given(data=grammar)
    @_with_regressions
    def run(data: bytes) -> None:
        check(pair, data)

    run()
