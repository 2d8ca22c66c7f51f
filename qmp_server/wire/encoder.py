"""QEMU's JSON writer: Python values in, the exact bytes QEMU's monitor would send out.

Contract: :func:`encode_line` turns one message into ``b'{...}\\r\\n'`` such that a transcript
from qmp-server diffs byte for byte against QEMU's.  Neighbours: messages are built by
``session.py`` and the command layer; values come from the parser or from handlers.

Rules:

1. Objects are QDicts: keys come out in bucket order of QEMU's ``tdb_hash(key) % 512``; keys
   sharing a bucket come out most-recently-inserted first.  Python dict insertion order stands
   for QEMU's insertion order, so builders insert keys in QEMU's order (schema member order).
2. Separators are ``", "`` and ``": "``; output is ASCII; non-ASCII and control characters are
   ``\\uXXXX`` with uppercase hex (surrogate pairs beyond the BMP); ``/`` is not escaped.
3. Integers print as integers; floats as C's ``%.17g``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["encode", "encode_line", "qdict_order"]

_BUCKETS = 512
_order_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
_key_cache: dict[str, str] = {}
_PLAIN = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _tdb_hash(key: str) -> int:
    raw = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The order in which QEMU iterates a QDict whose keys were inserted in ``keys`` order."""
    order = _order_cache.get(keys)
    if order is None:
        ranked = sorted(
            range(len(keys)), key=lambda i: (_tdb_hash(keys[i]) % _BUCKETS, -i)
        )
        order = tuple(keys[i] for i in ranked)
        if len(_order_cache) > 4096:
            _order_cache.clear()
        _order_cache[keys] = order
    return order


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    cp = ord(ch)
    if cp > 0xFFFF:
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}"
    return f"\\u{cp:04X}"


def _string(s: str) -> str:
    if _PLAIN.search(s) is None:
        return '"' + s + '"'
    return '"' + _PLAIN.sub(lambda m: _escape_char(m.group()), s) + '"'


def _key(k: str) -> str:
    text = _key_cache.get(k)
    if text is None:
        text = _string(k) + ": "
        if len(_key_cache) < 8192:
            _key_cache[k] = text
    return text


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{")
        first = True
        for k in qdict_order(tuple(value)):
            if not first:
                out.append(", ")
            first = False
            out.append(_key(k))
            _encode(value[k], out)
        out.append("}")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append("%.17g" % value)  # noqa: UP031 - C printf semantics
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as QMP JSON")


def encode(value: Any) -> str:
    """Encode one value as QEMU would, without a line ending."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def encode_line(value: Any) -> bytes:
    """Encode one message as a QMP output line (ending ``\\r\\n``)."""
    out: list[str] = []
    _encode(value, out)
    out.append("\r\n")
    return "".join(out).encode("ascii")
