"""QEMU's JSON message streamer and parser: tokens in, complete JSON values or errors out.

Contract: :class:`JSONStreamer` consumes the tokens of :class:`~qmp_server.wire.lexer.JSONLexer`
and yields, for every complete top-level value, either the decoded value or a
:class:`ParseError` whose ``desc`` is QEMU's ``JSON parse error, ...`` text.  Neighbours: the
QMP session (``session.py``) turns values into requests and errors into replies without ``id``.

Rules (QEMU's json-streamer and json-parser, reproduced from behaviour):

1. A value is complete when its brackets balance; a stray closer completes it at once.
2. Limits: 64 MiB of token bytes, 2 Mi tokens, nesting 1024 (brackets + braces): a breach
   reports an error and drops everything queued, as does a lexical error (``stray '...'``).
3. Decoded numbers follow QObject: an integer token becomes ``int`` when it fits int64 or
   uint64, otherwise ``float``; a float token is always ``float``.
4. Strings are checked as QEMU checks them: escapes, UTF-8 validity, no surrogates or
   noncharacters; ``\\u0000`` is allowed.  Error texts embed raw input bytes; they are made
   into ``str`` the way QEMU's JSON output would render them (invalid sequences -> U+FFFD).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qmp_server._types import INT64_MIN, UINT64_MAX
from qmp_server.wire.lexer import MAX_TOKEN_SIZE, JSONLexer, TokenType

__all__ = ["MAX_NESTING", "MAX_TOKEN_COUNT", "JSONStreamer", "ParseError", "qemu_bytes_to_str"]

MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10

_ESCAPES = {
    ord('"'): '"',
    ord("'"): "'",
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


@dataclass(frozen=True, slots=True)
class ParseError:
    """A malformed message: ``desc`` is the GenericError text QEMU replies with."""

    desc: str


class _Fail(Exception):
    """First parse error wins; the message is raw bytes (it may quote input)."""

    def __init__(self, msg: bytes) -> None:
        self.msg = msg


def _codepoint(s: bytes, i: int) -> tuple[int, int]:
    """Decode one modified-UTF-8 sequence at ``s[i]``: (code point or -1, next index)."""
    byte = s[i]
    i += 1
    if byte < 0x80:
        return byte, i
    if byte >= 0xFE or not byte & 0x40:
        return -1, i
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = s[i] if i < len(s) else 0
        if nxt & 0xC0 != 0x80:
            return -1, i
        i += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if (
        cp > 0x10FFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or cp & 0xFFFE == 0xFFFE
        or 0xD800 <= cp <= 0xDFFF
        or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2))
    ):
        cp = -1
    return cp, i


def _valid_codepoint(cp: int) -> bool:
    return not (
        cp < 0
        or cp > 0x10FFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or cp & 0xFFFE == 0xFFFE
        or 0xD800 <= cp <= 0xDFFF
    )


def qemu_bytes_to_str(raw: bytes) -> str:
    """Render a C string the way QEMU's JSON writer reads it (stops at NUL, bad bytes -> U+FFFD)."""
    if raw.isascii():
        return raw.decode("ascii")
    out = []
    i = 0
    while i < len(raw):
        cp, i = _codepoint(raw, i)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _hex4(s: bytes, i: int) -> int:
    if i + 4 > len(s) or any(b not in _HEX for b in s[i : i + 4]):
        return -1
    return int(s[i : i + 4], 16)


def _parse_string(text: bytes) -> str:
    quote = text[0]
    body = text[1:-1]
    if body.isascii() and b"\\" not in body:
        return body.decode("ascii")
    out: list[str] = []
    i = 1
    end = len(text) - 1
    while i < end:
        c = text[i]
        if c == 0x5C:  # backslash
            beg = i
            esc = text[i + 1]
            i += 2
            simple = _ESCAPES.get(esc)
            if simple is not None:
                out.append(simple)
                continue
            if esc != ord("u"):
                raise _Fail(b"invalid escape sequence in string")
            cp = _hex4(text, i)
            i += 4
            if 0xD800 <= cp <= 0xDBFF and text[i : i + 2] == b"\\u":
                cp = 0x10000 + ((cp & 0x3FF) << 10)
                trailing = _hex4(text, i + 2)
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp |= trailing & 0x3FF
                    i += 6
                else:
                    cp = -1
            if not _valid_codepoint(cp) and cp != 0:
                raise _Fail(text[beg:i] + b" is not a valid Unicode character")
            out.append(chr(cp))
            continue
        if c == quote:  # cannot happen inside a lexed token, but keeps the loop honest
            break
        cp, i = _codepoint(text, i)
        if cp < 0:
            raise _Fail(b"invalid UTF-8 sequence in string")
        out.append(chr(cp))
    return "".join(out)


def _parse_number(ttype: TokenType, text: bytes) -> int | float:
    if ttype == TokenType.INTEGER:
        value = int(text)
        if INT64_MIN <= value <= UINT64_MAX:
            return value
    return float(text)


_SCALARS = (TokenType.STRING, TokenType.INTEGER, TokenType.FLOAT, TokenType.KEYWORD)
_KEYWORDS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}


def _scalar(ttype: TokenType, text: bytes) -> Any:
    if ttype == TokenType.STRING:
        return _parse_string(text)
    if ttype == TokenType.KEYWORD:
        try:
            return _KEYWORDS[text]
        except KeyError:
            raise _Fail(b"invalid keyword '" + text + b"'") from None
    return _parse_number(ttype, text)


def _parse_tokens(tokens: list[tuple[TokenType, bytes]]) -> Any:
    """Parse one complete message, iteratively (nesting may reach 1024)."""
    n = len(tokens)
    pos = 0

    def pop() -> TokenType:
        nonlocal pos
        if pos >= n:
            raise _Fail(b"premature EOI")
        pos += 1
        return tokens[pos - 1][0]

    # frames: [container, is_object, pending_key, expecting_key]
    frames: list[list[Any]] = []
    while True:
        # -- parse the start of a value at ``pos``
        if pos >= n:
            raise _Fail(b"premature EOI")
        ttype, text = tokens[pos]
        if ttype == TokenType.LCURLY or ttype == TokenType.LSQUARE:
            pos += 1
            if pos >= n:
                raise _Fail(b"premature EOI")
            closer = TokenType.RCURLY if ttype == TokenType.LCURLY else TokenType.RSQUARE
            if tokens[pos][0] != closer:
                is_object = ttype == TokenType.LCURLY
                frames.append([{} if is_object else [], is_object, None, is_object])
                continue
            pos += 1
            value: Any = {} if ttype == TokenType.LCURLY else []
        elif ttype in _SCALARS:
            pos += 1
            value = _scalar(ttype, text)
        else:
            raise _Fail(b"expecting value")
        # -- a value is complete: hand it to the enclosing containers
        while True:
            if not frames:
                return value
            frame = frames[-1]
            container, is_object = frame[0], frame[1]
            if is_object and frame[3]:
                if not isinstance(value, str):
                    raise _Fail(b"key is not a string in object")
                frame[2] = value
                frame[3] = False
                if pop() != TokenType.COLON:
                    raise _Fail(b"missing : in object pair")
                break  # parse the member's value
            if is_object:
                key = frame[2]
                if key in container:
                    raise _Fail(b"duplicate key")
                container[key] = value
                sep = pop()
                if sep == TokenType.RCURLY:
                    frames.pop()
                    value = container
                    continue
                if sep != TokenType.COMMA:
                    raise _Fail(b"expected separator in dict")
                if pos >= n:
                    raise _Fail(b"premature EOI")
                frame[3] = True
                break
            container.append(value)
            sep = pop()
            if sep == TokenType.RSQUARE:
                frames.pop()
                value = container
                continue
            if sep != TokenType.COMMA:
                raise _Fail(b"expected separator in list")
            break


def _json_hook_int(text: str) -> int | float:
    value = int(text)
    return value if INT64_MIN <= value <= UINT64_MAX else float(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_FAST_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_int=_json_hook_int, parse_constant=_reject_constant
)


class JSONStreamer:
    """Bytes in, complete messages out: ``feed(data)`` returns values and :class:`ParseError`."""

    __slots__ = ("_brace", "_bracket", "_lexer", "_out", "_plain", "_token_size", "_tokens")

    def __init__(self) -> None:
        self._lexer = JSONLexer(self._on_token)
        self._tokens: list[tuple[TokenType, bytes]] = []
        self._brace = 0
        self._bracket = 0
        self._token_size = 0
        self._plain = True
        self._out: list[Any] = []

    def reset(self) -> None:
        """Drop partial input: QEMU re-creates the parser when a client disconnects."""
        self._lexer.reset()
        self._clear()

    def feed(self, data: bytes) -> list[Any]:
        """Lex and parse ``data``; return every message completed by it, in order."""
        if not self._tokens and self._lexer.at_start() and data.isascii():
            data = self._feed_fast(data)
        if data:
            self._lexer.feed(data)
        out, self._out = self._out, []
        return out

    def _feed_fast(self, data: bytes) -> bytes:
        """Decode whole plain objects with the C decoder; return the bytes it did not take.

        Exact because it only accepts what QEMU's lexer and parser would turn into the same
        value at the same boundary: ASCII objects without single quotes or ``\\u`` escapes
        (those take the exact path), no duplicate keys, no NaN/Infinity, depth < 1024.
        """
        if b"'" in data or b"\\u" in data:
            return data
        text = data.decode("ascii")
        pos = 0
        end = len(text)
        out = self._out
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            if pos >= end or text[pos] != "{":
                break
            try:
                value, stop = _FAST_DECODER.raw_decode(text, pos)
            except (ValueError, RecursionError):
                break
            out.append(value)
            pos = stop
        return data[pos:]

    def _clear(self) -> None:
        self._tokens.clear()
        self._brace = self._bracket = 0
        self._token_size = 0
        self._plain = True

    def _fail(self, msg: bytes, prefix: bytes = b"JSON parse error, ") -> None:
        self._clear()
        self._out.append(ParseError(qemu_bytes_to_str(prefix + msg)))

    def _on_token(self, ttype: TokenType, text: bytes) -> None:
        if ttype == TokenType.LCURLY:
            self._brace += 1
        elif ttype == TokenType.RCURLY:
            self._brace -= 1
        elif ttype == TokenType.LSQUARE:
            self._bracket += 1
        elif ttype == TokenType.RSQUARE:
            self._bracket -= 1
        elif ttype == TokenType.ERROR:
            self._fail(b"stray '" + text.split(b"\0", 1)[0] + b"'")
            return
        elif ttype == TokenType.STRING and self._plain:
            self._plain = b"\\u" not in text and text[0] != 0x27 and text.isascii()
        if self._token_size + len(text) + 1 > MAX_TOKEN_SIZE:
            self._fail(b"JSON token size limit exceeded", b"")
            return
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            self._fail(b"JSON token count limit exceeded", b"")
            return
        if self._bracket + self._brace > MAX_NESTING:
            self._fail(b"JSON nesting depth limit exceeded", b"")
            return
        self._tokens.append((ttype, text))
        self._token_size += len(text)
        if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
            return
        self._complete()

    def _complete(self) -> None:
        tokens = self._tokens
        value: Any = None
        if self._plain and len(tokens) > 1 and len(tokens) < 4096:
            # Common case: the C decoder is exact for ASCII input without \\u escapes or
            # single quotes (the lexer already rejected everything QEMU rejects lexically).
            try:
                value = _FAST_DECODER.decode(b" ".join(t for _, t in tokens).decode("ascii"))
            except (ValueError, RecursionError):
                value = _Fail
        else:
            value = _Fail
        if value is _Fail:
            try:
                value = _parse_tokens(tokens)
            except _Fail as err:
                self._fail(err.msg)
                return
        self._clear()
        self._out.append(value)
