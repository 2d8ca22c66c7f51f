"""HMP argument parsing: one command line and an argument spec in, typed values out.

Contract (QEMU's monitor, reproduced from recorded behaviour, see docs/hmp.md):

* the command name is the first run of non-blank characters; ``info`` takes a second one;
* ``s`` (string): a word, or a double-quoted string with ``\\\\ \\' \\" \\n \\r`` escapes;
  missing -> ``<cmd>: string expected``;
* ``b`` (boolean): ``on`` or ``off``, else ``Expected 'on' or 'off'``;
* ``-`` (flags): ``-d -r``...; a letter outside the set -> ``<cmd>: unsupported option -x``;
* anything left over -> ``<cmd>: extraneous characters at the end of line``.

Every parse error is followed by ``Try "help <cmd>" for more information``.
Neighbours: :mod:`qmp_server.hmp.table` holds the specs, :mod:`.interpreter` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Arg", "HMPParseError", "Scanner", "parse_args"]

_BLANK = " \t\n\r\v\f"


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: ``kind`` is ``s`` (string), ``b`` (on/off) or ``-`` (the flag letters in
    ``flags``, each stored as a boolean under its own name in ``names``)."""

    name: str
    kind: str
    optional: bool = False
    flags: str = ""
    names: tuple[str, ...] = ()


class HMPParseError(Exception):
    """A line that does not fit the command's arguments; ``text`` is the first output line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Scanner:
    """A cursor over one command line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANK:
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _BLANK:
            self.pos += 1
        return self.text[start : self.pos]

    def string(self) -> str | None:
        """A word or a quoted string; None when the quoting is broken."""
        if self.peek() != '"':
            return self.word()
        self.pos += 1
        out: list[str] = []
        escapes = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r"}
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                nxt = self.peek()
                if nxt not in escapes:
                    return None
                out.append(escapes[nxt])
                self.pos += 1
            else:
                out.append(c)
        return None


def parse_args(cmd: str, spec: tuple[Arg, ...], scanner: Scanner) -> dict[str, Any]:
    """Parse the rest of a line against ``spec``.

    :raise HMPParseError: with the text QEMU prints first (the ``Try "help"`` line is added
        by the interpreter).
    """
    values: dict[str, Any] = {}
    for arg in spec:
        scanner.skip_blanks()
        if arg.kind == "-":
            while scanner.peek() == "-" and scanner.pos + 1 < len(scanner.text):
                letter = scanner.text[scanner.pos + 1]
                if letter not in arg.flags:
                    raise HMPParseError(f"{cmd}: unsupported option -{letter}")
                values[arg.names[arg.flags.index(letter)]] = True
                scanner.pos += 2
                scanner.skip_blanks()
        elif arg.kind == "s":
            if scanner.at_end():
                if arg.optional:
                    continue
                raise HMPParseError(f"{cmd}: string expected")
            value = scanner.string()
            if value is None:
                raise HMPParseError(f"{cmd}: string expected")
            values[arg.name] = value
        elif arg.kind == "b":
            word = scanner.word()
            if word not in ("on", "off"):
                raise HMPParseError("Expected 'on' or 'off'")
            values[arg.name] = word == "on"
        else:  # pragma: no cover - the table is ours
            raise ValueError(f"unknown argument kind {arg.kind!r}")
    scanner.skip_blanks()
    if not scanner.at_end():
        raise HMPParseError(f"{cmd}: extraneous characters at the end of line")
    return values
