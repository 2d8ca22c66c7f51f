"""Types of the optional C extension built from _pages.c (see guest.py, rule 2)."""

from typing_extensions import Buffer

def fill(
    pool: Buffer, page_key: int, start: int, out: Buffer, indexes: Buffer | None = ..., /
) -> None: ...
def differs(
    pool: Buffer,
    page_key: int,
    start: int,
    data: Buffer,
    mask: Buffer,
    indexes: Buffer | None = ...,
    /,
) -> int: ...
def text_fill(
    pool: Buffer,
    marks: Buffer,
    page_key: int,
    case_key: int,
    start: int,
    out: Buffer,
    indexes: Buffer | None = ...,
    /,
) -> None: ...
def text_differs(
    pool: Buffer,
    marks: Buffer,
    page_key: int,
    case_key: int,
    start: int,
    data: Buffer,
    mask: Buffer,
    indexes: Buffer | None = ...,
    /,
) -> int: ...
