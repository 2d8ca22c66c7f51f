"""Which unexpected member QEMU names first: a model of the two hash tables involved.

When a QMP argument object has several members the schema does not know, QEMU 7.2 reports one
of them, and which one depends neither on the input order nor on the schema: the input visitor
copies the keys of the argument QDict (iterated in QDict bucket order) into a GLib
``GHashTable``, removes each key it visits, and names the first key left in the table's slot
order.  This module reproduces both orders:

* QDict: bucket ``tdb_hash(key) % 512``, ascending; within a bucket, the key inserted last
  comes first (qemu.md section 1.2);
* GHashTable (GLib 2.74, the Debian 12 build QEMU 7.2 links against): ``g_str_hash`` (djb2
  over signed chars), open addressing with quadratic probing, slot ``(hash * 11) % prime``,
  tombstones on removal, and the grow/shrink rules and in-place relocation of that release.

Nothing here affects whether arguments are valid, only which of several unexpected members a
message names; when in doubt the first one in input order would be a fine answer too.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["first_leftover", "ghash_order", "qdict_order"]

_M32 = 0xFFFFFFFF
_MIN_SHIFT = 3
_PRIME_MOD = (
    1,
    2,
    3,
    7,
    13,
    31,
    61,
    127,
    251,
    509,
    1021,
    2039,
    4093,
    8191,
    16381,
    32749,
    65521,
    131071,
    262139,
    524287,
    1048573,
    2097143,
    4194301,
    8388593,
    16777213,
    33554393,
    67108859,
    134217689,
    268435399,
    536870909,
    1073741789,
    2147483647,
)
_UNUSED, _TOMBSTONE = 0, 1


def _tdb_hash(key: bytes) -> int:
    value = (0x238F13AF * len(key)) & _M32
    for i, c in enumerate(key):
        value = (value + (c << (i * 5 % 24))) & _M32
    return (1103515243 * value + 12345) & _M32


def qdict_order(keys: Iterable[str]) -> list[str]:
    """The order QEMU iterates a QDict whose keys were inserted in ``keys`` order."""
    buckets: dict[int, list[str]] = {}
    for k in keys:
        buckets.setdefault(_tdb_hash(k.encode("utf-8", "surrogatepass")) % 512, []).insert(0, k)
    return [k for b in sorted(buckets) for k in buckets[b]]


def _str_hash(key: str) -> int:
    h = 5381
    for c in key.encode("utf-8", "surrogatepass"):
        h = (h * 33 + (c - 256 if c >= 128 else c)) & _M32
    return h if h >= 2 else 2


class _GHashSet:
    """Just enough of GLib's GHashTable to know its slot order."""

    def __init__(self) -> None:
        self.nnodes = 0
        self.noccupied = 0
        self._set_shift(_MIN_SHIFT)
        self.hashes = [_UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, h: int) -> int:
        return ((h * 11) & _M32) % self.mod

    def _lookup(self, key: str, h: int) -> tuple[int, bool]:
        i = self._index(h)
        step = 0
        tomb = -1
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == h and self.keys[i] == key:
                return i, True
            if self.hashes[i] == _TOMBSTONE and tomb < 0:
                tomb = i
            step += 1
            i = (i + step) & self.mask
        return (tomb if tomb >= 0 else i), False

    def insert(self, key: str) -> None:
        h = _str_hash(key)
        i, found = self._lookup(key, h)
        if found:
            return
        old = self.hashes[i]
        self.hashes[i] = h
        self.keys[i] = key
        self.nnodes += 1
        if old == _UNUSED:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        i, found = self._lookup(key, _str_hash(key))
        if not found:
            return
        self.hashes[i] = _TOMBSTONE
        self.keys[i] = None
        self.nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        if (
            self.size > self.nnodes * 4 and self.size > 1 << _MIN_SHIFT
        ) or self.size <= self.noccupied + self.noccupied // 16:
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        n = int(self.nnodes * 1.333)
        shift = 0
        while n:
            n >>= 1
            shift += 1
        self._set_shift(max(shift, _MIN_SHIFT))
        if self.size > old_size:
            self.hashes += [_UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        moved = [False] * max(self.size, old_size)
        for i in range(old_size):
            h = self.hashes[i]
            if h < 2:
                self.hashes[i] = _UNUSED
                continue
            if moved[i]:
                continue
            key = self.keys[i]
            self.hashes[i] = _UNUSED
            self.keys[i] = None
            while True:
                j = self._index(h)
                step = 0
                while moved[j]:
                    step += 1
                    j = (j + step) & self.mask
                moved[j] = True
                replaced, replaced_key = self.hashes[j], self.keys[j]
                self.hashes[j], self.keys[j] = h, key
                if replaced < 2:
                    break
                h, key = replaced, replaced_key
        del self.hashes[self.size :]
        del self.keys[self.size :]
        self.noccupied = self.nnodes

    def first(self) -> str | None:
        for h, k in zip(self.hashes, self.keys, strict=True):
            if h >= 2:
                return k
        return None


def first_leftover(keys: Iterable[str], visited: Iterable[str]) -> str | None:
    """The unexpected member QEMU names for an object with ``keys`` (in input order).

    :param visited: the keys the visitor consumed, in visiting order.
    """
    table = _GHashSet()
    for k in qdict_order(keys):
        table.insert(k)
    for k in visited:
        table.remove(k)
    return table.first()


def ghash_order(keys: Iterable[str]) -> list[str]:
    """The slot order of a GHashTable of strings inserted in ``keys`` order (QOM children)."""
    table = _GHashSet()
    for k in keys:
        table.insert(k)
    return [k for h, k in zip(table.hashes, table.keys, strict=True) if h >= 2 and k is not None]
