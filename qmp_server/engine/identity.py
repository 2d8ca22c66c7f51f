"""The guest's identity on the command line: ``-name`` and ``-uuid``, parsed as QEMU does.

``-name`` is a QemuOpts group whose implied key is ``guest`` (``-name vm1`` is
``-name guest=vm1``), with ``debug-threads`` and ``process`` beside it and ``,,`` standing for
a comma.  ``-uuid`` takes the 36-character form in either case and is reported in lower case.
"""

from __future__ import annotations

import re

__all__ = ["NULL_UUID", "parse_name", "parse_uuid", "split_opts"]

NULL_UUID = "00000000-0000-0000-0000-000000000000"

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_NAME_KEYS = ("guest", "debug-threads", "process")


def split_opts(text: str, implied: str | None) -> list[tuple[str, str]]:
    """QemuOpts ``key=value`` pairs (``,,`` is a comma; the first bare value is ``implied``).

    >>> split_opts("a,,b,process=x", "guest")
    [('guest', 'a,b'), ('process', 'x')]
    """
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += c
        i += 1
    parts.append(current)
    pairs: list[tuple[str, str]] = []
    for index, part in enumerate(parts):
        key, eq, value = part.partition("=")
        if not eq:
            if index == 0 and implied is not None:
                pairs.append((implied, part))
                continue
            key, value = part, "on"
        pairs.append((key, value))
    return pairs


def parse_name(text: str) -> str | None:
    """The guest name of a ``-name`` value (None when only other keys are given).

    :raise ValueError: ``Invalid parameter 'KEY'`` for a key QEMU does not know.

    >>> parse_name("guest=vm1,debug-threads=on")
    'vm1'
    """
    name: str | None = None
    for key, value in split_opts(text, "guest"):
        if key not in _NAME_KEYS:
            raise ValueError(f"Invalid parameter '{key}'")
        if key == "guest":
            name = value
    return name


def parse_uuid(text: str) -> str:
    """A ``-uuid`` value in QEMU's reported form (lower case).

    :raise ValueError: QEMU's text for a malformed UUID.
    """
    if not _UUID_RE.fullmatch(text):
        raise ValueError("failed to parse UUID string: wrong format")
    return text.lower()
