"""QEMU-style size strings: ``-m 64G``, ``initial-bytes=300M``, ``--dirty-rate 1G``.

Contract: pure text -> int (bytes) and int -> text.  Neighbours: the CLI (``-m``,
``--dirty-rate``), :mod:`qmp_server.engine.devices` (``-device`` size properties).

Rules (our reading of how QEMU's size parser behaves, re-implemented):

* a size is a non-negative number, decimal (``512``, ``1.5``) or hexadecimal (``0x1000``),
  followed by at most one suffix letter ``b``/``B`` (bytes), ``k``/``K``, ``m``/``M``,
  ``g``/``G``, ``t``/``T``, ``p``/``P`` or ``e``/``E`` (powers of 1024);
* without a suffix the caller's *default suffix* applies (bytes for most options, MiB for
  ``-m``: ``-m 64`` is 64 MiB);
* a fraction needs an explicit suffix other than ``b`` (``1.5G`` yes, ``1.5`` no), and
  hexadecimal takes no fraction;
* the result must be below 2**64.

Errors are :class:`ValueError` whose text is QEMU's QERR_INVALID_PARAMETER_VALUE wording,
``Parameter 'NAME' expects a non-negative number below 2^64``; ``-m`` additionally reports
``ram size too large`` / ``Invalid RAM size`` (see :func:`parse_memory_size`).

>>> parse_size("64G")
68719476736
>>> parse_memory_size("64")
67108864
>>> format_size(3 * 1024**3 // 2)
'1.5 GiB'
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_RAM_SIZE",
    "SIZE_HINT",
    "SizeError",
    "format_size",
    "parse_memory_size",
    "parse_size",
    "qemu_strtosz",
]

_LIMIT = 1 << 64
_RAM_ALIGN = 8192
#: QEMU's x86 default RAM size (128 MiB) when ``-m`` is absent or ``-m 0``.
DEFAULT_RAM_SIZE = 128 << 20

#: The hint QEMU prints under a bad size (part of the start-up error text).
SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
_UINT64_MAX = _LIMIT - 1
_DECIMAL = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_HEX = re.compile(r"[ \t\n\v\f\r]*([+-]?)0[xX]([0-9a-fA-F]+)")
_FRACTION = re.compile(r"\.([0-9]*)([eE][+-]?[0-9]+)?")
_SUFFIX = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


class SizeError(ValueError):
    """Not a size; ``out_of_range`` tells QEMU's "out of range" apart from "invalid"."""

    def __init__(self, out_of_range: bool) -> None:
        super().__init__("range" if out_of_range else "invalid")
        self.out_of_range = out_of_range


def qemu_strtosz(text: str, default_shift: int = 0) -> int:
    """QEMU's ``qemu_strtosz``: the exact accepted forms were checked against QEMU 7.2.

    Decimal (``010`` is ten) or hex integer part, an optional decimal fraction, one optional
    binary suffix (B K M G T P E, any case); without a suffix ``default_shift`` applies.

    :raise SizeError: invalid text, or a value that does not fit 64 bits.
    """
    m = _DECIMAL.match(text)
    if m is None:
        raise SizeError(False)
    end = m.end()
    if "-" in m.group(1):
        raise SizeError(False)
    value = int(m.group(2))
    if value > _UINT64_MAX:  # ERANGE: reported as such only when nothing follows the digits
        raise SizeError(text[end:] == "")
    fraction_bits = 0
    hex_mode = value == 0 and text[end : end + 1] in ("x", "X")
    if hex_mode:
        h = _HEX.match(text)
        if h is None:  # "0x" without digits: strtoull stops after the "0"
            raise SizeError(False)
        end, value = h.end(), int(h.group(2), 16)
        if value > _UINT64_MAX:
            raise SizeError(text[end:] == "")
        if text[end : end + 1] == ".":
            raise SizeError(False)
    elif text[end : end + 1] == ".":
        f = _FRACTION.match(text, end)
        assert f is not None
        if f.group(2):  # an exponent makes the whole input invalid
            raise SizeError(False)
        if f.group(1):
            scaled = float("0." + f.group(1)) * 2.0**64
            # a fraction that rounds up to 1.0 overflows the C cast to uint64_t: it reads 0
            fraction_bits = int(scaled) if scaled < 2.0**64 else 0
            end = f.end()
        else:
            end += 1  # "1." and "1.k": the lone dot is skipped
    shift = _SUFFIX.get(text[end : end + 1].upper()) if text[end : end + 1] else None
    if shift is not None:
        end += 1
    else:
        shift = default_shift
    if text[end:]:
        raise SizeError(False)
    if shift == 0:
        if fraction_bits:
            raise SizeError(False)
        return value
    mul = 1 << shift
    product = fraction_bits * mul
    total = value * mul + (product >> 64) + ((product & _UINT64_MAX) >> 63)
    if total > _UINT64_MAX:
        raise SizeError(True)
    return total


def parse_size(text: str, default_suffix: str = "b", *, name: str = "size") -> int:
    """Parse a QEMU size string into bytes, with QEMU's error text naming ``name``.

    >>> parse_size("4k"), parse_size("1.5M"), parse_size("2", "M")
    (4096, 1572864, 2097152)
    >>> parse_size("1x")
    Traceback (most recent call last):
    ...
    ValueError: Parameter 'size' expects a non-negative number below 2^64
    """
    try:
        return qemu_strtosz(text, _SHIFT[default_suffix.lower()])
    except SizeError:
        raise ValueError(f"Parameter '{name}' expects a non-negative number below 2^64") from None


def parse_memory_size(text: str) -> int:
    """Parse the ``-m`` argument the way QEMU does: a bare number means MiB; 0 = the default.

    ``-m size=64G`` is accepted too.  The result is rounded up to 8 KiB, as QEMU rounds RAM.

    :raise ValueError: the :func:`parse_size` error (the CLI adds QEMU's suffix hint), or
        ``ram size too large``.

    >>> parse_memory_size("512M"), parse_memory_size("size=1G"), parse_memory_size("1")
    (536870912, 1073741824, 1048576)
    >>> parse_memory_size("0") == DEFAULT_RAM_SIZE
    True
    """
    value = text[len("size=") :] if text.startswith("size=") else text
    size = parse_size(value, "M")
    if size == 0:
        return DEFAULT_RAM_SIZE
    size = -(-size // _RAM_ALIGN) * _RAM_ALIGN
    if size >= _LIMIT:
        raise ValueError("ram size too large")
    return size


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(size: int) -> str:
    """Format a byte count with a binary unit and three significant digits.

    >>> format_size(0), format_size(4096), format_size(64 << 30), format_size(1000)
    ('0 B', '4 KiB', '64 GiB', '1000 B')
    """
    if size < 0:
        raise ValueError("size must be non-negative")
    index = 0 if size == 0 else min((size.bit_length() - 1) // 10, len(_UNITS) - 1)
    value = size / (1 << (10 * index))
    text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
    return f"{text} {_UNITS[index]}"
