"""Types of the optional C extension built from _qjson.c (see encoder.py)."""

from typing import Any

class Fallback(Exception): ...

def encode_line(value: Any, /) -> bytes: ...
