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

try:  # the C fast path (optional: the Python code below gives the same bytes)
    from qmp_server.wire import _qjson
except ImportError:  # pragma: no cover - depends on the build
    _qjson = None  # type: ignore[assignment]

__all__ = ["Encoded", "encode", "encode_line", "encode_line_python", "qdict_order"]

_BUCKETS = 512
_order_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
_str_cache: dict[str, str] = {}
_plan_cache: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_PLAIN = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
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
        ranked = sorted(range(len(keys)), key=lambda i: (_tdb_hash(keys[i]) % _BUCKETS, -i))
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
    text = _str_cache.get(s)
    if text is not None:
        return text
    if _PLAIN.search(s) is None:
        text = '"' + s + '"'
    else:
        text = '"' + _PLAIN.sub(lambda m: _escape_char(m.group()), s) + '"'
    if len(s) <= 64 and len(_str_cache) < 8192:
        _str_cache[s] = text  # enum values, names and ids recur constantly
    return text


def _plan(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """For a key set: (key, text before its value) in QEMU's order, separators included."""
    plan = _plan_cache.get(keys)
    if plan is None:
        ordered = qdict_order(keys)
        plan = tuple(
            (k, ("{" if i == 0 else ", ") + _string(k) + ": ") for i, k in enumerate(ordered)
        )
        if len(_plan_cache) > 4096:
            _plan_cache.clear()
        _plan_cache[keys] = plan
    return plan


def _encode(value: Any, out: list[str]) -> None:
    append = out.append
    kind = type(value)
    if kind is dict:
        if not value:
            append("{}")
            return
        for key, prefix in _plan(tuple(value)):
            append(prefix)
            item = value[key]
            ikind = type(item)
            if ikind is str:
                append(_string(item))
            elif ikind is bool:
                append("true" if item else "false")
            elif ikind is int:
                append(str(item))
            else:
                _encode(item, out)
        append("}")
    elif kind is str:
        append(_string(value))
    elif kind is Encoded:
        append(value.encoded.decode("ascii"))
    elif kind is list or kind is tuple:
        if not value:
            append("[]")
            return
        first = True
        for item in value:
            append("[" if first else ", ")
            first = False
            _encode(item, out)
        append("]")
    elif value is True:
        append("true")
    elif value is False:
        append("false")
    elif value is None:
        append("null")
    elif isinstance(value, int):
        append(str(int(value)))
    elif isinstance(value, float):
        append("%.17g" % value)  # noqa: UP031 - C printf semantics
    elif isinstance(value, dict | list | tuple | str):
        _encode(_plain_copy(value), out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as QMP JSON")


def _plain_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        return str(value)
    return list(value)


class Encoded:
    """A value whose QMP text is made once: an answer that stays the same from one request to
    the next (``query-migrate-capabilities`` between two changes of the capabilities), so a
    client polling it costs no encoding.  The encoders write ``encoded`` where the value
    would go; :meth:`~qmp_server.commands.dispatch.Dispatcher.execute` hands out ``value``.
    """

    __slots__ = ("encoded", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.encoded: bytes = encode_line(value)[:-2]

    def __eq__(self, other: object) -> bool:
        return bool(self.value == (other.value if isinstance(other, Encoded) else other))

    __hash__ = None  # type: ignore[assignment]  # like the list or dict it stands for

    def __repr__(self) -> str:
        return f"Encoded({self.value!r})"


if _qjson is not None and hasattr(_qjson, "register_encoded"):
    _qjson.register_encoded(Encoded)


def encode(value: Any) -> str:
    """Encode one value as QEMU would, without a line ending."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def encode_line(value: Any) -> bytes:
    """Encode one message as a QMP output line (ending ``\\r\\n``); the C fast path
    (``_qjson.c``, the same bytes) when it is built and the message is plain."""
    if _qjson is not None:
        try:
            return _qjson.encode_line(value)
        except _qjson.Fallback:
            pass
    return encode_line_python(value)


def encode_line_python(value: Any) -> bytes:
    """:func:`encode_line` in Python (the reference of the C fast path)."""
    out: list[str] = []
    _encode(value, out)
    out.append("\r\n")
    return "".join(out).encode("ascii")
