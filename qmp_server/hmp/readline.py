"""The line editor of an HMP socket: what QEMU echoes while a client types.

QEMU's readline redraws the line after every byte it reads: it moves the cursor back over what
it last drew (``ESC [ D`` per character), prints the whole buffer and clears to the end of the
line (``ESC [ K``).  ``\\r`` and ``\\n`` each end a line (``\\r\\n`` is a line and an empty
line); the output then goes ``\\r\\n``, the command's text, and the prompt.  Recorded from QEMU
7.2 and 10.0 (tests/conformance/fixtures/hmp).  Escape sequences (arrow keys) and control
characters other than backspace are consumed without effect here; as in QEMU, the character
after ``ESC`` (other than ``[``/``O``) and the one ending ``ESC [ digits`` are swallowed, even
``\r``/``\n``.

Pure: :meth:`LineEditor.feed` returns the echo and the completed lines.
"""

from __future__ import annotations

__all__ = ["LineEditor"]

_LEFT = "\x1b[D"
_CLEAR = "\x1b[K"


class LineEditor:
    """One HMP client's input line and what its terminal shows."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self._shown = ""
        self._escape = 0  # 0: normal, 1: after ESC, 2: inside ESC [ ...

    def reset(self) -> None:
        """A new prompt: nothing typed, nothing drawn."""
        self.buf = []
        self._shown = ""

    def feed_char(self, char: str) -> tuple[str, bool]:
        """One input character; returns (echo, whether it ended the line)."""
        if self._escape == 1:
            self._escape = 2 if char in "[O" else 0
            return "", False
        if self._escape == 2:
            if not char.isdigit():  # parameters accumulate; any other character ends it
                self._escape = 0
            return "", False
        if char == "\x1b":
            self._escape = 1
            return "", False
        if char in "\r\n":
            return "\r\n", True
        if char in "\x08\x7f":
            if self.buf:
                self.buf.pop()
            return self._redraw(), False
        if char < " ":
            return "", False
        self.buf.append(char)
        return self._redraw(), False

    def take_line(self) -> str:
        line = "".join(self.buf)
        self.reset()
        return line

    def _redraw(self) -> str:
        text = "".join(self.buf)
        if text == self._shown:
            return ""
        out = _LEFT * len(self._shown) + text + _CLEAR
        self._shown = text
        return out
