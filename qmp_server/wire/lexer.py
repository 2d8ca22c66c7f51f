"""QEMU's JSON lexer, byte for byte: a DFA that cuts a byte stream into JSON tokens.

Contract: :meth:`JSONLexer.feed` takes raw bytes in any chunking and calls ``on_token(type,
text)`` for every token, in order, exactly as QEMU's ``json-lexer.c`` would (the same tokens,
the same error tokens with the same text, the same recovery).  Neighbours: the token consumer is
:class:`qmp_server.wire.streamer.JSONStreamer`.

Design rules, stated once:

1. The states and transitions are QEMU's (facts taken from its behaviour; no code copied).
   Lexical errors produce an ``ERROR`` token carrying the bytes read so far, including the bad
   byte; the lexer then skips input until a structural character, a control character other
   than tab, or the impossible UTF-8 bytes 0xFE/0xFF (the QMP spec's parser reset).
2. Number and keyword tokens end on a *lookahead* byte, which is then lexed again from START.
   So ``1`` alone waits for more input, as QEMU does.
3. Speed: most QMP input is short strings and punctuation; strings and whitespace are consumed
   with regular expressions whose character classes equal the DFA's, and everything else goes
   through the explicit DFA.  Chunking never changes the output (a hypothesis test proves it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import IntEnum

__all__ = ["MAX_TOKEN_SIZE", "JSONLexer", "TokenType"]

#: QEMU's limit on the size of one token and of all queued tokens (64 MiB).
MAX_TOKEN_SIZE = 64 << 20


class TokenType(IntEnum):
    ERROR = 0
    LCURLY = 1
    RCURLY = 2
    LSQUARE = 3
    RSQUARE = 4
    COLON = 5
    COMMA = 6
    INTEGER = 7
    FLOAT = 8
    KEYWORD = 9
    STRING = 10
    #: A token cut at :data:`MAX_TOKEN_SIZE` while still incomplete (QEMU passes its lexer state).
    OVERSIZE = 11


# Lexer states.
_START = 0
_DQ = 1
_DQ_ESC = 2
_SQ = 3
_SQ_ESC = 4
_ZERO = 5
_DIGITS = 6
_SIGN = 7
_MANT = 8
_MANT_DIGITS = 9
_EXP_E = 10
_EXP_SIGN = 11
_EXP_DIGITS = 12
_KEYWORD = 13
_RECOVERY = 14

# Table entries: (kind, value).  kinds: _GO = move to state, consume; _EMIT = token ends with this
# byte (consumed); _LOOK = token ends before this byte (byte lexed again from START); _ERR = error
# token including this byte; _SKIP = whitespace at START; _RESYNC = leave recovery, relex byte.
_GO, _EMIT, _LOOK, _ERR, _SKIP, _RESYNC, _STAY = range(7)

_PUNCT = {
    ord("{"): TokenType.LCURLY,
    ord("}"): TokenType.RCURLY,
    ord("["): TokenType.LSQUARE,
    ord("]"): TokenType.RSQUARE,
    ord(":"): TokenType.COLON,
    ord(","): TokenType.COMMA,
}
_DIGIT = frozenset(b"0123456789")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_WS = frozenset(b" \t\r\n")


def _build_table() -> list[list[tuple[int, int]]]:
    err = (_ERR, 0)
    table = [[err] * 256 for _ in range(_RECOVERY + 1)]
    start = table[_START]
    start[ord('"')] = (_GO, _DQ)
    start[ord("'")] = (_GO, _SQ)
    start[ord("0")] = (_GO, _ZERO)
    for c in b"123456789":
        start[c] = (_GO, _DIGITS)
    start[ord("-")] = (_GO, _SIGN)
    for c, tok in _PUNCT.items():
        start[c] = (_EMIT, tok)
    for c in _LOWER:
        start[c] = (_GO, _KEYWORD)
    for c in _WS:
        start[c] = (_SKIP, 0)
    for string, escape, quote in ((_DQ, _DQ_ESC, ord('"')), (_SQ, _SQ_ESC, ord("'"))):
        for c in range(0x20, 0xFE):
            table[string][c] = (_GO, string)
            table[escape][c] = (_GO, string)
        table[string][ord("\\")] = (_GO, escape)
        table[string][quote] = (_EMIT, TokenType.STRING)
    look_int = (_LOOK, TokenType.INTEGER)
    look_float = (_LOOK, TokenType.FLOAT)
    table[_ZERO] = [look_int] * 256
    for c in _DIGIT:
        table[_ZERO][c] = err
    table[_ZERO][ord(".")] = (_GO, _MANT)
    table[_DIGITS] = [look_int] * 256
    for c in _DIGIT:
        table[_DIGITS][c] = (_GO, _DIGITS)
        table[_SIGN][c] = (_GO, _DIGITS)
        table[_MANT][c] = (_GO, _MANT_DIGITS)
        table[_EXP_E][c] = (_GO, _EXP_DIGITS)
        table[_EXP_SIGN][c] = (_GO, _EXP_DIGITS)
    table[_SIGN][ord("0")] = (_GO, _ZERO)
    for e in b"eE":
        table[_DIGITS][e] = (_GO, _EXP_E)
    table[_DIGITS][ord(".")] = (_GO, _MANT)
    table[_MANT_DIGITS] = [look_float] * 256
    for c in _DIGIT:
        table[_MANT_DIGITS][c] = (_GO, _MANT_DIGITS)
    for e in b"eE":
        table[_MANT_DIGITS][e] = (_GO, _EXP_E)
    table[_EXP_E][ord("-")] = (_GO, _EXP_SIGN)
    table[_EXP_E][ord("+")] = (_GO, _EXP_SIGN)
    table[_EXP_DIGITS] = [look_float] * 256
    for c in _DIGIT:
        table[_EXP_DIGITS][c] = (_GO, _EXP_DIGITS)
    table[_KEYWORD] = [(_LOOK, TokenType.KEYWORD)] * 256
    for c in _LOWER:
        table[_KEYWORD][c] = (_GO, _KEYWORD)
    rec = table[_RECOVERY]
    for c in range(256):
        rec[c] = (_STAY, 0)
    for c in range(0x20):
        rec[c] = (_RESYNC, 0)
    rec[ord("\t")] = (_STAY, 0)
    for c in (0xFE, 0xFF, *_PUNCT):
        rec[c] = (_RESYNC, 0)
    return table


_TABLE = _build_table()

# Fast paths whose character classes equal the DFA's string/whitespace/recovery states.
_WS_RUN = re.compile(rb"[ \t\r\n]+")
_DQ_BODY = re.compile(rb'(?:[^"\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*')
_SQ_BODY = re.compile(rb"(?:[^'\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*")
_DQ_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*"')
_RECOVERY_RUN = re.compile(rb"[^\x00-\x08\x0a-\x1f\xfe\xff\[\]{}:,]+")

TokenSink = Callable[[TokenType, bytes], None]


class JSONLexer:
    """Feed bytes, receive tokens through ``on_token(type, text)``."""

    __slots__ = ("_on_token", "_state", "_token")

    def __init__(self, on_token: TokenSink) -> None:
        self._on_token = on_token
        self._state = _START
        self._token = bytearray()

    def at_start(self) -> bool:
        """True between tokens, outside error recovery (a fast path may take over)."""
        return self._state == _START

    def reset(self) -> None:
        """Forget any partial token (a new connection starts from scratch)."""
        self._state = _START
        self._token.clear()

    def feed(self, data: bytes) -> None:
        emit = self._on_token
        table = _TABLE
        n = len(data)
        i = 0
        state = self._state
        token = self._token
        while i < n:
            if state == _START:
                c = data[i]
                tok = _PUNCT.get(c)
                if tok is not None:
                    i += 1
                    emit(tok, data[i - 1 : i])
                    continue
                if c == 0x22:  # a whole double-quoted string in one regex
                    m = _DQ_STRING.match(data, i)
                    if m is not None and m.end() - i <= MAX_TOKEN_SIZE:
                        i = m.end()
                        emit(TokenType.STRING, m.group())
                        continue
                elif c in _WS:
                    m = _WS_RUN.match(data, i)
                    assert m is not None
                    i = m.end()
                    continue
            elif state == _RECOVERY:
                m = _RECOVERY_RUN.match(data, i)
                if m is not None:
                    i = m.end()
                    continue
            elif state in (_DQ, _SQ):
                body = _DQ_BODY if state == _DQ else _SQ_BODY
                m = body.match(data, i)
                assert m is not None
                end = m.end()
                if end > i:
                    # a run ending in the middle of an escape pair leaves it to the DFA
                    room = MAX_TOKEN_SIZE + 1 - len(token)
                    if end - i >= room:
                        token += data[i : i + room]
                        i += room
                        emit(TokenType.OVERSIZE, bytes(token))
                        token.clear()
                        state = _START
                        continue
                    token += data[i:end]
                    i = end
                    if i >= n:
                        break
            c = data[i]
            kind, value = table[state][c]
            if kind == _GO:
                token.append(c)
                state = value
                i += 1
            elif kind == _EMIT:
                token.append(c)
                i += 1
                emit(TokenType(value), bytes(token))
                token.clear()
                state = _START
            elif kind == _LOOK:
                emit(TokenType(value), bytes(token))
                token.clear()
                state = _START
            elif kind in (_SKIP, _STAY):
                i += 1
            elif kind == _RESYNC:
                state = _START
            else:  # _ERR
                token.append(c)
                i += 1
                emit(TokenType.ERROR, bytes(token))
                token.clear()
                state = _RECOVERY
            if len(token) > MAX_TOKEN_SIZE:
                emit(TokenType.OVERSIZE, bytes(token))
                token.clear()
                state = _START
        self._state = state
