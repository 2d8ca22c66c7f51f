"""Stage 1 of the schema compiler: QAPI schema text to located raw expressions.

Contract: :func:`parse_schema` reads a schema file (and, recursively, the files it
``include``\\ s) and returns every top-level expression in source order, each with the file and
line it starts on and the ``##`` documentation block that precedes it.  It knows the *syntax*
only (QAPI's JSON dialect: single-quoted strings, ``true``/``false``, objects, arrays, ``#``
comments); whether an expression means anything is for :mod:`.expr` to decide.

Any defect in the input, including unreadable or non-UTF-8 files, include cycles and absurd
nesting, raises :class:`~qmp_server.errors.SchemaError` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmp_server.errors import SchemaError

__all__ = ["RawExpr", "parse_schema", "parse_text"]

_MAX_DEPTH = 64  # QAPI schemas nest a few levels; this bounds recursion on hostile input


@dataclass(frozen=True, slots=True)
class RawExpr:
    """One top-level ``{...}`` of a schema file, with where it came from."""

    data: dict[str, Any]
    fname: str
    line: int
    doc: str | None = None


class _Parser:
    """Recursive-descent parser over one file's text; values are plain Python objects."""

    def __init__(self, text: str, fname: str) -> None:
        self.text = text
        self.fname = fname
        self.pos = 0
        self.line = 1
        self.pending_doc: str | None = None

    # -- errors -----------------------------------------------------------------------------

    def error(self, msg: str, line: int | None = None) -> SchemaError:
        return SchemaError(self.fname, self.line if line is None else line, msg)

    # -- lexical layer ----------------------------------------------------------------------

    def _skip_space(self) -> None:
        """Skip whitespace and comments, collecting ``##`` doc blocks on the way."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "\n":
                self.line += 1
                self.pos += 1
            elif ch in " \t\r\f":
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                end = len(text) if end < 0 else end
                comment = text[self.pos : end]
                at_line_start = text[text.rfind("\n", 0, self.pos) + 1 : self.pos].strip() == ""
                self.pos = end
                if comment.rstrip() == "##" and at_line_start:
                    self._read_doc_block()
            else:
                return

    def _read_doc_block(self) -> None:
        """We stand just after an opening ``##``; read up to the closing ``##`` line."""
        start_line = self.line
        text = self.text
        lines: list[str] = []
        while True:
            if self.pos >= len(text):
                raise self.error("documentation comment must end with '##'", start_line)
            self.pos += 1  # the newline ending the previous comment line
            self.line += 1
            end = text.find("\n", self.pos)
            end = len(text) if end < 0 else end
            raw = text[self.pos : end].strip()
            self.pos = end
            if raw == "##":
                break
            if not raw.startswith("#"):
                raise self.error("missing '#' at start of documentation comment line")
            body = raw[1:]
            if body and not body.startswith(" "):
                raise self.error("missing space after '#' in documentation comment")
            lines.append(body[1:])
        self.pending_doc = "\n".join(lines).strip() or None

    def _peek(self) -> str:
        self._skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _expect(self, ch: str, what: str) -> None:
        if self._peek() != ch:
            raise self.error(f"expected {what}")
        self.pos += 1

    def _string(self) -> str:
        """A single-quoted string; we stand on the opening quote."""
        text = self.text
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(text) or text[self.pos] == "\n":
                raise self.error('missing terminating "\'"')
            ch = text[self.pos]
            self.pos += 1
            if ch == "'":
                return "".join(out)
            if ch == "\\":
                if self.pos >= len(text) or text[self.pos] not in "\\'":
                    raise self.error("unknown escape \\" + text[self.pos : self.pos + 1])
                ch = text[self.pos]
                self.pos += 1
            elif not ch.isprintable():
                raise self.error("funny character in string")
            out.append(ch)

    # -- grammar ----------------------------------------------------------------------------

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.error("nesting too deep")
        ch = self._peek()
        if ch == "{":
            return self._object(depth)
        if ch == "[":
            return self._array(depth)
        if ch == "'":
            return self._string()
        for word, val in (("true", True), ("false", False)):
            if self.text.startswith(word, self.pos):
                after = self.text[self.pos + len(word) : self.pos + len(word) + 1]
                if not (after.isalnum() or after in "_-"):
                    self.pos += len(word)
                    return val
        if ch == "":
            raise self.error("expected value, got end of input")
        if ch == '"':
            raise self.error("strings must be single-quoted")
        if ch in "]}:,":
            raise self.error(f"expected value, got '{ch}'")
        raise self.error(f"stray '{ch}'" if ch.isprintable() else "stray character")

    def _object(self, depth: int) -> dict[str, Any]:
        self.pos += 1
        result: dict[str, Any] = {}
        if self._peek() == "}":
            self.pos += 1
            return result
        while True:
            ch = self._peek()
            if ch != "'":
                raise self.error(
                    "strings must be single-quoted" if ch == '"' else "expected string key"
                )
            key_line = self.line
            key = self._string()
            if key in result:
                raise self.error(f"duplicate key '{key}'", key_line)
            self._expect(":", "':'")
            result[key] = self.value(depth + 1)
            ch = self._peek()
            self.pos += 1
            if ch == "}":
                return result
            if ch != ",":
                self.pos -= 1
                raise self.error("expected ',' or '}'")

    def _array(self, depth: int) -> list[Any]:
        self.pos += 1
        result: list[Any] = []
        if self._peek() == "]":
            self.pos += 1
            return result
        while True:
            result.append(self.value(depth + 1))
            ch = self._peek()
            self.pos += 1
            if ch == "]":
                return result
            if ch != ",":
                self.pos -= 1
                raise self.error("expected ',' or ']'")

    def expressions(self) -> list[RawExpr]:
        out: list[RawExpr] = []
        while self._peek() != "":
            if self.text[self.pos] != "{":
                raise self.error("expected '{' to start a top-level expression")
            line = self.line
            doc, self.pending_doc = self.pending_doc, None
            data = self._object(0)
            if self.pending_doc is not None:
                raise self.error("documentation comment inside an expression", line)
            out.append(RawExpr(data, self.fname, line, doc))
        return out


def parse_text(text: str, fname: str = "<string>") -> list[RawExpr]:
    """Parse one file's text; ``include`` and ``pragma`` expressions are returned as they are.

    :raise SchemaError: on any syntax error, located by line.
    """
    return _Parser(text, fname).expressions()


def _read(path: Path, fname: str, where: tuple[str, int] | None) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SchemaError(fname, 1, f"file is not UTF-8: {err.reason}") from err
    except (OSError, ValueError) as err:
        wf, wl = where if where else (fname, 1)
        reason = err.strerror if isinstance(err, OSError) else str(err)
        raise SchemaError(wf, wl, f"can't read schema file '{fname}': {reason}") from err


def parse_schema(path: str | Path) -> list[RawExpr]:
    """Parse ``path`` and every file it includes (each at most once, depth first).

    ``{ 'include': 'x.json' }`` names a file relative to the including file.  The include
    expression itself is consumed; ``pragma`` expressions are passed through.

    :raise SchemaError: on any defect in any file.
    """
    seen: set[Path] = set()
    out: list[RawExpr] = []

    def visit(p: Path, shown: str, where: tuple[str, int] | None, stack: tuple[Path, ...]) -> None:
        try:
            resolved = p.resolve()
        except (OSError, ValueError, RuntimeError) as err:
            wf, wl = where if where else (shown, 1)
            raise SchemaError(wf, wl, f"can't read schema file '{shown}': {err}") from err
        if resolved in stack:
            wf, wl = where if where else (shown, 1)
            raise SchemaError(wf, wl, f"inclusion loop for '{shown}'")
        if resolved in seen:
            return
        seen.add(resolved)
        for expr in parse_text(_read(p, shown, where), shown):
            if "include" in expr.data:
                target = expr.data["include"]
                if len(expr.data) != 1:
                    raise SchemaError(expr.fname, expr.line, "'include' takes no other keys")
                if not isinstance(target, str) or not target:
                    raise SchemaError(expr.fname, expr.line, "value of 'include' must be a string")
                child = p.parent / target
                visit(
                    child,
                    str(Path(shown).parent / target),
                    (expr.fname, expr.line),
                    (*stack, resolved),
                )
            else:
                out.append(expr)

    path = Path(path)
    visit(path, str(path), None, ())
    return out
