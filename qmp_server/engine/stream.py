"""The migration stream and its return path, sans-I/O (the h11 shape).

Contract: bytes in, typed frozen events out, and typed calls in, bytes out.  No sockets, no
clocks.  ``docs/stream-format.md`` is the byte-by-byte specification; this module is its only
implementation.  Neighbours: :mod:`qmp_server.engine.guest` and
:mod:`qmp_server.engine.devices` (what the records carry), the migration engine (decides
what to send and when), ``runtime/migration_io.py`` (moves the bytes).

Rules:

1. The decoder raises :class:`StreamError` for every defect of the input (bad magic or
   version, unknown record, bad length, record out of order, page out of range, truncation,
   checksum mismatch) and never any other exception.  Once raised, it raises again.
2. Any split of the same bytes into :meth:`StreamDecoder.receive_data` calls yields the same
   events.
3. A stream is accepted as complete only after ``COMPLETE``, a ``CHECKSUM`` that matches the
   running xxh3-64 of every byte before it (but page contents: checksum algorithm 2), and
   ``EOF``, in that order.  So a stream whose framing, indexes, device data or digests were
   corrupted can never end in :class:`EndOfStream`; corrupted page contents are caught by the
   RAM digest the loader compares at the end (:class:`Complete`).
4. Speed: RAM travels in records of up to 64 MiB of page data (the engine uses up to 4 MiB).
   The ``*_parts`` encoder methods return a record as a list of buffers (header bytes, then
   the caller's page data untouched) for a gather write, so the page data is never copied by
   the encoder; the ``bytes`` methods join them.  The decoder keeps one growable buffer with
   a read offset; a transport may receive straight into it (:meth:`StreamDecoder.get_buffer`
   and :meth:`StreamDecoder.buffer_updated`, the ``BufferedProtocol`` shape).  By default an
   event's page data is a ``bytes`` copy; with ``zero_copy=True`` it is a ``memoryview`` into
   that buffer, valid until the next ``receive_data``/``get_buffer`` call.

>>> enc = StreamEncoder()
>>> wire = enc.header(ram_size=1 << 20, fill="zero", seed=0, profile="7.2")
>>> wire += enc.zero_run(0, 256) + enc.complete("00" * 32, ())
>>> dec = StreamDecoder()
>>> dec.receive_data(wire); dec.receive_data(b"")
>>> [type(e).__name__ for e in iter(dec.next_event, NEED_DATA)]
['StreamHeader', 'ZeroRun', 'Complete', 'Checkpoint', 'EndOfStream']
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import xxhash

from qmp_server.engine.compression import LEGACY_MAX_LENGTH, LegacyPageCompressor
from qmp_server.engine.devices import DeviceChunk, DeviceChunkKind
from qmp_server.engine.guest import FILL_CODES, PAGE_SIZE, Fill, GuestMemory
from qmp_server.engine.idle_fill import FirmwareContent
from qmp_server.engine.mapped_ram import BlockRegion, check_region
from qmp_server.engine.page_run import PageRun
from qmp_server.engine.xbzrle import decode as decode_xbzrle
from qmp_server.errors import ProtocolError

__all__ = [
    "CHECKSUM_XXH3_64",
    "CHECKSUM_XXH3_64_NO_PAGES",
    "COMPRESSION_CODES",
    "MAGIC",
    "MAPPED_BLOCK_BYTES",
    "MAX_PAYLOAD",
    "NEED_DATA",
    "RP_BITMAP_CHUNK",
    "VERSION",
    "ChannelHello",
    "ChannelSync",
    "Checkpoint",
    "Complete",
    "CompressedPage",
    "CompressedPages",
    "DeviceData",
    "EncodedPages",
    "EndOfPrecopy",
    "EndOfStream",
    "MappedBlock",
    "MultifdSetup",
    "NeedData",
    "OpenReturnPath",
    "Part",
    "PostcopyAdvise",
    "PostcopyDiscard",
    "PostcopyListen",
    "PostcopyResume",
    "PostcopyRun",
    "RamList",
    "RamRun",
    "Recover",
    "ReturnPathDecoder",
    "ReturnPathEncoder",
    "RpBitmapEnd",
    "RpClosed",
    "RpOpen",
    "RpRecvBitmap",
    "RpReqPages",
    "RpResumed",
    "RpShut",
    "RpSwitchoverAck",
    "StreamDecoder",
    "StreamEncoder",
    "StreamError",
    "StreamEvent",
    "StreamHeader",
    "SyncMarker",
    "XbzrlePage",
    "ZeroList",
    "ZeroRun",
    "apply_ram_event",
    "encode_guest_pages",
    "encode_guest_pages_parts",
    "guest_for_header",
]

MAGIC: Final = b"QMPSMIG\n"
VERSION: Final = 1
#: Largest record payload accepted (64 MiB of data plus room for a record's own fields).
MAX_PAYLOAD: Final = (64 << 20) + 4096
#: Checksum algorithms (HEADER ``checksum_alg``).  1: xxh3-64 of every byte (streams written
#: before algorithm 2; still read).  2: the same without the page contents of RAM records,
#: which the destination checks end to end instead (the RAM digest in COMPLETE, see
#: docs/stream-format.md): hashing them again cost as much CPU as generating them.
CHECKSUM_XXH3_64: Final = 1
CHECKSUM_XXH3_64_NO_PAGES: Final = 2
_CHECKSUMS = (CHECKSUM_XXH3_64, CHECKSUM_XXH3_64_NO_PAGES)

FLAG_SWITCHOVER_ACK: Final = 0x1
FLAG_RETURN_PATH: Final = 0x2
#: the source's ``mapped-ram`` is on: RAM blocks come as MAPPED_BLOCK records (QEMU sends its
#: capability in the configuration section; a destination that differs fails the load)
FLAG_MAPPED_RAM: Final = 0x4
_KNOWN_FLAGS = FLAG_SWITCHOVER_ACK | FLAG_RETURN_PATH | FLAG_MAPPED_RAM


class Tag(enum.IntEnum):
    """Record tags (first byte of every record)."""

    HEADER = 0x01
    RAM_RUN = 0x10
    RAM_LIST = 0x11
    ZERO_RUN = 0x12
    ZERO_LIST = 0x13
    XBZRLE = 0x14
    COMPRESSED = 0x15
    COMPRESSED_PAGE = 0x16
    DEVICE = 0x20
    SYNC = 0x30
    OPEN_RETURN_PATH = 0x31
    END_OF_PRECOPY = 0x32
    POSTCOPY_ADVISE = 0x33
    POSTCOPY_DISCARD = 0x34
    POSTCOPY_LISTEN = 0x35
    POSTCOPY_RUN = 0x36
    RECOVER = 0x37
    POSTCOPY_RESUME = 0x38
    COMPLETE = 0x40
    MULTIFD_SETUP = 0x50
    CHANNEL = 0x51
    CHANNEL_SYNC = 0x52
    MAPPED_BLOCK = 0x53
    CHECKSUM = 0x7E
    EOF = 0x7F


_REC = struct.Struct("<BI")  # tag, payload length
_HEADER = struct.Struct("<HIQBQB")  # flags, page size, ram size, fill, seed, checksum algorithm
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RUN = struct.Struct("<QI")  # start, count
_ZRUN = struct.Struct("<QQ")  # start, count
_DEV = struct.Struct("<BBB")  # kind, flags, id length
_TAGS = {int(t) for t in Tag}
#: Records that only a postcopy stream carries after the switch or on a recovery connection.
_RECOVER = struct.Struct("<Q")  # ram size
_MULTIFD = struct.Struct("<BB8s")  # channels, compression method, session
_CHANNEL = struct.Struct("<BB8sQ")  # channel id, channels, session, ram size
_COMPRESSED = struct.Struct("<BI")  # method, page count
#: first page, pages, bitmap offset, pages offset, where the stream goes on
_MAPPED = struct.Struct("<QQQQQ")
#: A ``MAPPED_BLOCK`` record's size: the block's bitmap starts right after it.
MAPPED_BLOCK_BYTES: Final = _REC.size + _MAPPED.size
#: ``multifd-compression`` methods and their code in MULTIFD_SETUP and COMPRESSED records
COMPRESSION_CODES: Final = {"none": 0, "zlib": 1, "zstd": 2}
_CODE_COMPRESSION = {v: k for k, v in COMPRESSION_CODES.items()}
_CODE_FILLS: dict[int, Fill] = {0: "zero", 1: "random", 2: "idle", 3: "text"}
_LE64 = np.dtype("<u8")


class StreamError(ProtocolError):
    """The migration stream (or return path) is malformed; the message says how."""


class NeedData:
    """The sentinel type of :data:`NEED_DATA`: a complete event needs more bytes."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamHeader:
    version: int
    page_size: int
    ram_size: int
    fill: Fill
    seed: int
    switchover_ack: bool
    return_path: bool
    profile: str
    mapped_ram: bool = False


@dataclass(frozen=True, slots=True)
class RamRun:
    """Consecutive non-zero pages from ``start``; ``data`` is ``count * page_size`` bytes."""

    start: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RamList:
    """Pages at ``indexes``; ``data`` holds them in the same order."""

    indexes: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class ZeroRun:
    start: int
    count: int


@dataclass(frozen=True, slots=True)
class XbzrlePage:
    """Page ``index`` as an XBZRLE delta against the content the destination holds."""

    index: int
    delta: bytes


@dataclass(frozen=True, slots=True)
class ZeroList:
    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeviceData:
    chunk: DeviceChunk


@dataclass(frozen=True, slots=True)
class SyncMarker:
    """The source synced its dirty bitmap: ``pass_number`` is its dirty-sync-count."""

    pass_number: int


@dataclass(frozen=True, slots=True)
class MultifdSetup:
    """Main stream: pages travel on ``channels`` extra connections of this ``session``."""

    channels: int
    compression: str
    session: bytes


@dataclass(frozen=True, slots=True)
class MappedBlock:
    """``MAPPED_BLOCK``: a RAM block's pages and bitmap are at fixed offsets of the file
    (``mapped-ram``); the stream goes on at ``region.next_offset``.  The decoder drops what it
    holds after the record: its reader must go on from there."""

    region: BlockRegion


@dataclass(frozen=True, slots=True)
class ChannelHello:
    """First record of a multifd channel connection (instead of HEADER)."""

    channel_id: int
    channels: int
    session: bytes
    ram_size: int


@dataclass(frozen=True, slots=True)
class ChannelSync:
    """Multifd channel: the pages that follow belong to dirty sync ``generation``."""

    generation: int


@dataclass(frozen=True, slots=True)
class CompressedPages:
    """Multifd channel: ``indexes`` pages, compressed together by ``compression``."""

    compression: str
    indexes: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class CompressedPage:
    """One page as its own zlib stream (7.2's legacy ``compress`` capability)."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenReturnPath:
    """The source asks the destination to open the return path."""


@dataclass(frozen=True, slots=True)
class EndOfPrecopy:
    """The source stopped the guest: what follows is stop-and-copy data.

    ``running`` is False when the guest was already paused before the migration stopped it
    (QEMU's global-state runstate): the destination then stays paused, or in ``prelaunch``
    when the source's guest never started (``prelaunch``: ``-S`` and no ``cont``).
    """

    running: bool = True
    prelaunch: bool = False


@dataclass(frozen=True, slots=True)
class PostcopyAdvise:
    """The source may switch to postcopy (its ``postcopy-ram`` was on at setup)."""


@dataclass(frozen=True, slots=True)
class PostcopyDiscard:
    """The switch: the pages the destination must not use (``bitmap``, 1 bit per page, LSB
    first): sent never, or dirtied since they were sent.  They arrive later or on request."""

    bitmap: bytes


@dataclass(frozen=True, slots=True)
class PostcopyListen:
    """The source stopped its guest: the destination enters ``postcopy-active``."""


@dataclass(frozen=True, slots=True)
class PostcopyRun:
    """Device state sent: the destination guest runs (if the source's was ``running``)."""

    running: bool = True


@dataclass(frozen=True, slots=True)
class Recover:
    """First record of a postcopy recovery connection (instead of ``HEADER``)."""

    ram_size: int


@dataclass(frozen=True, slots=True)
class PostcopyResume:
    """The source took the destination's missing pages: postcopy goes on."""


@dataclass(frozen=True, slots=True)
class Complete:
    """All state was sent; the source's digests at switchover, for verification."""

    ram_digest: str
    device_digests: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified running checksum (xxh3-64 of every byte before it)."""

    value: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The stream ended properly (after ``COMPLETE`` and a verified checksum)."""


StreamEvent = (
    StreamHeader
    | MappedBlock
    | RamRun
    | RamList
    | ZeroRun
    | ZeroList
    | XbzrlePage
    | DeviceData
    | SyncMarker
    | OpenReturnPath
    | EndOfPrecopy
    | PostcopyAdvise
    | PostcopyDiscard
    | PostcopyListen
    | PostcopyRun
    | Recover
    | PostcopyResume
    | Complete
    | Checkpoint
    | EndOfStream
    | MultifdSetup
    | ChannelHello
    | ChannelSync
    | CompressedPages
    | CompressedPage
)

Buffer = bytes | bytearray | memoryview
#: A piece of an encoded record: a buffer, or page data its writer builds (``*_parts``).
Part = Buffer | PageRun


# ---- encoder ---------------------------------------------------------------------------------


class StreamEncoder:
    """Builds the stream.  Every method returns the bytes to send, in call order.

    :raise ValueError: (every method) on arguments the format cannot carry; this is a bug in
        the caller, not a stream defect.
    """

    def __init__(self, checksum: int = CHECKSUM_XXH3_64_NO_PAGES) -> None:
        if checksum not in _CHECKSUMS:
            raise ValueError(f"unknown checksum algorithm {checksum}")
        self._checksum = checksum
        #: page data may be a :class:`PageRun` built by the writer (not in the checksum)
        self.defers_pages = checksum != CHECKSUM_XXH3_64
        self._hash = xxhash.xxh3_64()
        self.bytes_encoded = 0
        self.page_size = PAGE_SIZE
        self._started = False
        self._finished = False

    def _record(self, tag: Tag, *parts: Buffer, pages: Buffer = b"") -> bytes:
        return b"".join(self._record_parts(tag, *parts, pages=pages))  # type: ignore[arg-type]

    def _record_parts(self, tag: Tag, *parts: Buffer, pages: Buffer | PageRun = b"") -> list[Part]:
        """The record as buffers: one ``bytes`` head (tag, length, small fields), then data.

        ``pages`` (page contents, last in the payload) is left out of the checksum, so it may
        be a :class:`~qmp_server.engine.guest.PageRun` the writer builds (:attr:`defers_pages`).
        """
        if not self._started:
            raise ValueError("header() must come first")
        if self._finished:
            raise ValueError("the stream is complete")
        length = sum(len(p) for p in parts) + len(pages)
        if length > MAX_PAYLOAD:
            raise ValueError(f"record payload of {length} bytes exceeds {MAX_PAYLOAD}")
        # small leading parts are folded into the head; big data stays the caller's buffer
        head = [_REC.pack(tag, length)]
        rest = list(parts)
        while rest and len(rest[0]) <= 4096:
            head.append(bytes(rest.pop(0)))
        fields: list[Buffer] = [b"".join(head), *rest]
        update = self._hash.update
        for part in fields:
            update(part)
        out: list[Part] = list(fields)
        if len(pages):
            if self._checksum == CHECKSUM_XXH3_64:
                if isinstance(pages, PageRun):
                    raise ValueError("checksum algorithm 1 hashes page contents: no PageRun")
                update(pages)
            out.append(pages)
        self.bytes_encoded += _REC.size + length
        return out

    def header(
        self,
        *,
        ram_size: int,
        fill: Fill,
        seed: int,
        profile: str,
        page_size: int = PAGE_SIZE,
        switchover_ack: bool = False,
        return_path: bool = False,
        mapped_ram: bool = False,
    ) -> bytes:
        """Magic, version and the ``HEADER`` record."""
        if self._started:
            raise ValueError("header() was already called")
        name = profile.encode()
        if len(name) > 255:
            raise ValueError("profile name longer than 255 bytes")
        if page_size <= 0 or ram_size % page_size:
            raise ValueError("ram_size must be a multiple of page_size")
        flags = (
            (FLAG_SWITCHOVER_ACK if switchover_ack else 0)
            | (FLAG_RETURN_PATH if return_path else 0)
            | (FLAG_MAPPED_RAM if mapped_ram else 0)
        )
        self._started = True
        self.page_size = page_size
        prefix = MAGIC + _U16.pack(VERSION)
        self._hash.update(prefix)
        self.bytes_encoded += len(prefix)
        payload = _HEADER.pack(
            flags,
            page_size,
            ram_size,
            FILL_CODES[fill],
            seed & (2**64 - 1),
            self._checksum,
        )
        return prefix + self._record(Tag.HEADER, payload, bytes([len(name)]), name)

    def _check_data(self, data: Buffer | PageRun, count: int) -> None:
        if len(data) != count * self.page_size:
            raise ValueError(f"{count} pages need {count * self.page_size} bytes, got {len(data)}")

    def ram_run(self, start: int, data: Buffer) -> bytes:
        """``RAM_RUN``: consecutive pages from ``start``."""
        count = len(data) // self.page_size
        self._check_data(data, count)
        return self._record(Tag.RAM_RUN, _RUN.pack(start, count), pages=data)

    def ram_run_parts(self, start: int, data: Buffer | PageRun) -> list[Part]:
        """``RAM_RUN`` as buffers for a gather write; ``data`` is not copied (a
        :class:`~qmp_server.engine.guest.PageRun` is built by the writer)."""
        count = len(data) // self.page_size
        self._check_data(data, count)
        return self._record_parts(Tag.RAM_RUN, _RUN.pack(start, count), pages=data)

    def ram_list_parts(
        self, indexes: Sequence[int] | npt.NDArray[np.int64], data: Buffer
    ) -> list[Part]:
        """``RAM_LIST`` as buffers for a gather write; ``data`` is not copied."""
        idx = np.asarray(indexes, dtype=_LE64)
        self._check_data(data, idx.size)
        return self._record_parts(Tag.RAM_LIST, _U32.pack(idx.size), idx.tobytes(), pages=data)

    def ram_list(self, indexes: Sequence[int] | npt.NDArray[np.int64], data: Buffer) -> bytes:
        """``RAM_LIST``: the pages at ``indexes``, data in the same order."""
        idx = np.asarray(indexes, dtype=_LE64)
        self._check_data(data, idx.size)
        return self._record(Tag.RAM_LIST, _U32.pack(idx.size), idx.tobytes(), pages=data)

    def zero_run(self, start: int, count: int) -> bytes:
        """``ZERO_RUN``: ``count`` zero pages from ``start`` (no page data)."""
        return self._record(Tag.ZERO_RUN, _ZRUN.pack(start, count))

    def xbzrle(self, index: int, delta: bytes) -> bytes:
        """``XBZRLE``: page ``index`` as a delta (``engine/xbzrle.py``), 1..page size bytes."""
        if not 0 < len(delta) <= self.page_size:
            raise ValueError("an XBZRLE delta is 1 to page-size bytes")
        return self._record(Tag.XBZRLE, _U64.pack(index), delta)

    def zero_list(self, indexes: Sequence[int] | npt.NDArray[np.int64]) -> bytes:
        """``ZERO_LIST``: zero pages at ``indexes``."""
        idx = np.asarray(indexes, dtype=_LE64)
        return self._record(Tag.ZERO_LIST, _U32.pack(idx.size), idx.tobytes())

    def device(self, chunk: DeviceChunk) -> bytes:
        """``DEVICE``: one device chunk."""
        name = chunk.device_id.encode()
        if not 0 < len(name) <= 255:
            raise ValueError("device id must be 1..255 bytes")
        head = _DEV.pack(chunk.kind, 1 if chunk.initial else 0, len(name))
        return self._record(Tag.DEVICE, head, name, _U64.pack(chunk.offset), chunk.data)

    def device_parts(self, chunk: DeviceChunk) -> list[Part]:
        """``DEVICE`` as buffers for a gather write; the chunk data is not copied."""
        name = chunk.device_id.encode()
        if not 0 < len(name) <= 255:
            raise ValueError("device id must be 1..255 bytes")
        head = _DEV.pack(chunk.kind, 1 if chunk.initial else 0, len(name))
        return self._record_parts(Tag.DEVICE, head, name, _U64.pack(chunk.offset), chunk.data)

    def sync(self, pass_number: int) -> bytes:
        """``SYNC``: a dirty-bitmap sync happened (dirty-sync-count ``pass_number``)."""
        return self._record(Tag.SYNC, _U32.pack(pass_number))

    def open_return_path(self) -> bytes:
        return self._record(Tag.OPEN_RETURN_PATH)

    def end_of_precopy(self, running: bool = True, *, prelaunch: bool = False) -> bytes:
        """``END_OF_PRECOPY``; ``running=False``: the guest was paused before switchover;
        ``prelaunch``: it never started."""
        if prelaunch:
            return self._record(Tag.END_OF_PRECOPY, b"\x02")
        if running:
            return self._record(Tag.END_OF_PRECOPY)
        return self._record(Tag.END_OF_PRECOPY, b"\x00")

    def postcopy_advise(self) -> bytes:
        return self._record(Tag.POSTCOPY_ADVISE)

    def postcopy_discard(self, bitmap: Buffer) -> bytes:
        """``POSTCOPY_DISCARD``: ``bitmap`` is ``ceil(pages / 8)`` bytes, LSB first."""
        return self._record(Tag.POSTCOPY_DISCARD, bitmap)

    def postcopy_listen(self) -> bytes:
        return self._record(Tag.POSTCOPY_LISTEN)

    def postcopy_run(self, running: bool = True) -> bytes:
        return self._record(Tag.POSTCOPY_RUN, b"\x01" if running else b"\x00")

    def recover(self, ram_size: int) -> bytes:
        """Magic, version and ``RECOVER``: the start of a postcopy recovery connection."""
        if self._started:
            raise ValueError("recover() starts a stream: header() or recover() was called")
        self._started = True
        prefix = MAGIC + _U16.pack(VERSION)
        self._hash.update(prefix)
        self.bytes_encoded += len(prefix)
        return prefix + self._record(Tag.RECOVER, _RECOVER.pack(ram_size))

    def postcopy_resume(self) -> bytes:
        return self._record(Tag.POSTCOPY_RESUME)

    def multifd_setup(self, channels: int, compression: str, session: bytes) -> bytes:
        """``MULTIFD_SETUP`` (main stream, setup): pages go on ``channels`` connections."""
        if not 1 <= channels <= 255 or len(session) != 8:
            raise ValueError("bad multifd setup")
        code = COMPRESSION_CODES[compression]
        return self._record(Tag.MULTIFD_SETUP, _MULTIFD.pack(channels, code, session))

    def mapped_block(self, region: BlockRegion) -> bytes:
        """``MAPPED_BLOCK``: where a block's bitmap and pages are (``mapped-ram``); the
        writer goes on at ``region.next_offset`` of the stream."""
        return self._record(
            Tag.MAPPED_BLOCK,
            _MAPPED.pack(
                region.first_page,
                region.pages,
                region.bitmap_offset,
                region.pages_offset,
                region.next_offset,
            ),
        )

    def channel_hello(self, channel_id: int, channels: int, session: bytes, ram_size: int) -> bytes:
        """Magic, version and ``CHANNEL``: the start of multifd channel ``channel_id``."""
        if self._started:
            raise ValueError("channel_hello() starts a stream")
        if not 0 <= channel_id < channels <= 255 or len(session) != 8:
            raise ValueError("bad multifd channel")
        self._started = True
        prefix = MAGIC + _U16.pack(VERSION)
        self._hash.update(prefix)
        self.bytes_encoded += len(prefix)
        fields = _CHANNEL.pack(channel_id, channels, session, ram_size)
        return prefix + self._record(Tag.CHANNEL, fields)

    def channel_sync(self, generation: int) -> bytes:
        """``CHANNEL_SYNC`` then a ``CHECKSUM``: what follows belongs to ``generation``."""
        return self._record(Tag.CHANNEL_SYNC, _U32.pack(generation)) + self.checkpoint()

    def compressed_parts(
        self, compression: str, indexes: npt.NDArray[np.int64], data: Buffer
    ) -> list[Part]:
        """``COMPRESSED``: the pages ``indexes`` as one ``compression`` packet (hashed whole:
        a flipped bit in it is caught by the next checksum, not only by the digest)."""
        idx = np.asarray(indexes, dtype=_LE64)
        head = _COMPRESSED.pack(COMPRESSION_CODES[compression], idx.size)
        return self._record_parts(Tag.COMPRESSED, head, idx.tobytes(), data)

    def compressed_page(self, index: int, data: bytes) -> bytes:
        """``COMPRESSED_PAGE``: page ``index`` as one zlib stream (legacy ``compress``)."""
        if not 0 < len(data) <= LEGACY_MAX_LENGTH:
            raise ValueError(f"a compressed page of {len(data)} bytes")
        return self._record(Tag.COMPRESSED_PAGE, _U64.pack(index), data)

    def channel_end(self) -> bytes:
        """``CHECKSUM`` + ``EOF``: the end of a multifd channel."""
        out = self.checkpoint() + self._record(Tag.EOF)
        self._finished = True
        return out

    def checkpoint(self) -> bytes:
        """``CHECKSUM``: the running checksum so far (lets the peer fail early)."""
        return self._record(Tag.CHECKSUM, _U64.pack(self._hash.intdigest()))

    def complete(self, ram_digest: str, device_digests: Sequence[tuple[str, str]]) -> bytes:
        """``COMPLETE`` + ``CHECKSUM`` + ``EOF``: the end of the stream."""
        parts = [bytes.fromhex(ram_digest), _U16.pack(len(device_digests))]
        if len(parts[0]) != 32:
            raise ValueError("ram_digest must be 64 hex digits")
        for dev_id, digest in device_digests:
            name = dev_id.encode()
            raw = bytes.fromhex(digest)
            if not 0 < len(name) <= 255 or len(raw) != 32:
                raise ValueError("bad device digest entry")
            parts += [bytes([len(name)]), name, raw]
        out = self._record(Tag.COMPLETE, *parts) + self.checkpoint() + self._record(Tag.EOF)
        self._finished = True
        return out


# ---- decoder ---------------------------------------------------------------------------------


class _State(enum.Enum):
    MAGIC = "magic"
    HEADER = "header"
    BODY = "body"
    NEED_CHECKSUM = "need-checksum"  # after COMPLETE
    NEED_EOF = "need-eof"  # after COMPLETE + CHECKSUM
    DONE = "done"


class StreamDecoder:
    """Parses the stream: :meth:`receive_data`, then :meth:`next_event` until ``NEED_DATA``.

    :param max_payload: largest record payload accepted (a bigger length is an error at once).
    :param zero_copy: page data of ``RamRun``/``RamList`` events is a ``memoryview`` into the
        decoder's buffer, valid until the next :meth:`receive_data` or :meth:`get_buffer`
        (module rule 4); by default it is ``bytes``.
    :param recovery: the connection is a postcopy recovery: ``RECOVER`` comes instead of
        ``HEADER`` (checksum algorithm 2), then the rest of the postcopy stream.
    :param channel: the connection is a multifd channel: ``CHANNEL`` comes instead of
        ``HEADER`` (checksum algorithm 2), then page records, ``COMPRESSED``,
        ``CHANNEL_SYNC`` and checksums; it ends with ``CHECKSUM`` + ``EOF``.
    """

    def __init__(
        self,
        max_payload: int = MAX_PAYLOAD,
        *,
        zero_copy: bool = False,
        recovery: bool = False,
        channel: bool = False,
    ) -> None:
        self._buf = bytearray()
        self._start = 0  # first unparsed byte
        self._end = 0  # end of the received bytes
        self._eof = False
        self._state = _State.MAGIC
        self._hash = xxhash.xxh3_64()
        self._error: StreamError | None = None
        self._max_payload = max_payload
        self._zero_copy = zero_copy
        self.header: StreamHeader | None = None
        self._pages = 0
        # checksum algorithm 1 hashes page contents too
        self._hash_pages = not (recovery or channel)
        self.bytes_decoded = 0
        self._recovery = recovery
        self._channel = channel
        self._multifd_setup = False
        #: ``mapped-ram``: the first page of the next MAPPED_BLOCK (blocks come in order)
        self._mapped_next = 0
        self._after_checksum = False
        #: postcopy records seen so far (their order is checked: module rule 1)
        self._postcopy: set[Tag] = set()

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet."""
        return self._end - self._start

    def _reserve(self, size: int) -> None:
        """Make room for ``size`` more bytes after the received ones."""
        if self._start == self._end:
            self._start = self._end = 0
        buf = self._buf
        pending = self._end - self._start
        if self._end + size <= len(buf):
            return
        if pending + size <= len(buf) and self._start >= pending:
            # compact in place (no overlap): the buffer keeps its identity and size
            buf[:pending] = buf[self._start : self._end]
        else:
            # a new buffer: views handed out earlier (zero_copy) stay valid on the old one
            grown = bytearray(max(pending + size, 2 * len(buf), 1 << 16))
            grown[:pending] = buf[self._start : self._end]
            self._buf = grown
        self._start, self._end = 0, pending

    def get_buffer(self, sizehint: int) -> memoryview:
        """A writable view to receive into (then :meth:`buffer_updated`).

        While a record is incomplete the view ends exactly where that record ends, so a
        big record is received in place and, once parsed, leaves the buffer empty: the
        buffer is reused from its start without moving any bytes.
        """
        size = max(sizehint, 1)
        pending = self._end - self._start
        if pending >= _REC.size and self._state is not _State.MAGIC:
            (_, length) = _REC.unpack_from(self._buf, self._start)
            if length <= self._max_payload and _REC.size + length > pending:
                size = _REC.size + length - pending
        self._reserve(size)
        return memoryview(self._buf)[self._end : self._end + size]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last :meth:`get_buffer` view."""
        if nbytes == 0:
            self._eof = True
        else:
            self._end += nbytes

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes; ``b""`` means the peer closed (EOF)."""
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if n == 0:
            self._eof = True
            return
        self._reserve(n)
        self._buf[self._end : self._end + n] = data
        self._end += n

    def _fail(self, message: str) -> StreamError:
        self._error = StreamError(message)
        return self._error

    def next_event(self) -> StreamEvent | NeedData:
        """The next complete event, or :data:`NEED_DATA`.

        :raise StreamError: on any defect (module rule 1).
        """
        if self._error is not None:
            raise self._error
        try:
            event = self._next()
        except StreamError as err:
            self._error = err
            raise
        except (struct.error, ValueError, OverflowError, IndexError) as err:
            raise self._fail(f"malformed record: {err}") from err
        if event is NEED_DATA and self._eof and self._state is not _State.DONE:
            pending = self._end - self._start
            if pending:
                raise self._fail(
                    f"stream truncated: {pending} bytes of an incomplete "
                    f"{'record' if self._state is not _State.MAGIC else 'stream header'}"
                )
            raise self._fail(f"stream truncated: ended before EOF (in state {self._state.value})")
        return event

    def _next(self) -> StreamEvent | NeedData:
        buf = self._buf
        pos = self._start
        avail = self._end - pos
        if self._state is _State.MAGIC:
            if avail < len(MAGIC) + 2:
                head = bytes(buf[pos : pos + min(avail, len(MAGIC))])
                if head and not MAGIC.startswith(head):
                    raise self._fail("bad magic: not a qmp-server migration stream")
                return NEED_DATA
            if buf[pos : pos + len(MAGIC)] != MAGIC:
                raise self._fail("bad magic: not a qmp-server migration stream")
            (version,) = _U16.unpack_from(buf, pos + len(MAGIC))
            if version != VERSION:
                raise self._fail(f"unsupported stream version {version} (expected {VERSION})")
            size = len(MAGIC) + 2
            with memoryview(buf) as view:
                self._hash.update(view[pos : pos + size])
            pos = self._start = pos + size
            avail -= size
            self.bytes_decoded += size
            self._state = _State.HEADER
        if self._state is _State.DONE:
            if avail:
                raise self._fail("data after the end of the stream")
            return NEED_DATA
        if avail < _REC.size:
            return NEED_DATA
        tag, length = _REC.unpack_from(buf, pos)
        if tag not in _TAGS:
            raise self._fail(f"unknown record type 0x{tag:02x}")
        if length > self._max_payload:
            raise self._fail(f"record 0x{tag:02x} too long: {length} bytes")
        end = _REC.size + length
        if avail < end:
            return NEED_DATA
        checksum_before = self._hash.intdigest()
        view = memoryview(buf)[pos : pos + end]
        if self._hash_pages or tag not in (Tag.RAM_RUN, Tag.RAM_LIST):
            self._hash.update(view)
        else:  # the record's fields, not its page contents (checksum algorithm 2)
            fields = _RUN.size
            if tag == Tag.RAM_LIST:
                fields = 4 + 8 * _U32.unpack_from(buf, pos + _REC.size)[0] if length >= 4 else 0
            self._hash.update(view[: _REC.size + min(fields, length)])
        body = view[_REC.size :]
        payload: Buffer = body
        if not (self._zero_copy and tag in (Tag.RAM_RUN, Tag.RAM_LIST)):
            payload = body.tobytes()
        self._start = pos + end
        if self._start == self._end:
            self._start = self._end = 0
        self.bytes_decoded += end
        return self._dispatch(Tag(tag), payload, checksum_before)  # type: ignore[arg-type]

    def _expect_len(self, tag: Tag, payload: bytes, length: int) -> None:
        if len(payload) != length:
            raise self._fail(
                f"record {tag.name} has {len(payload)} bytes of payload, expected {length}"
            )

    def _check_pages(self, tag: Tag, first: int, last_excl: int) -> None:
        if first < 0 or last_excl > self._pages or first > last_excl:
            raise self._fail(
                f"record {tag.name}: pages [{first}, {last_excl}) out of range "
                f"(guest has {self._pages} pages)"
            )

    def _indexes(self, tag: Tag, raw: bytes) -> tuple[int, ...]:
        idx = np.frombuffer(raw, dtype=_LE64)
        if idx.size and int(idx.max()) >= self._pages:
            raise self._fail(f"record {tag.name}: page {int(idx.max())} out of range")
        return tuple(idx.tolist())

    def _dispatch(self, tag: Tag, payload: bytes, checksum_before: int) -> StreamEvent:
        state = self._state
        after_checksum, self._after_checksum = self._after_checksum, tag is Tag.CHECKSUM
        if state is _State.HEADER:
            first = Tag.CHANNEL if self._channel else Tag.RECOVER if self._recovery else Tag.HEADER
            if tag is not first:
                raise self._fail(f"expected {first.name} record, got {tag.name}")
            if self._channel:
                return self._channel_hello(payload)
            if self._recovery:
                return self._recover(payload)
            return self._header(payload)
        if tag in (Tag.HEADER, Tag.RECOVER, Tag.CHANNEL):
            raise self._fail(f"a {tag.name} record after the start of the stream")
        if self._channel:
            return self._channel_record(tag, payload, checksum_before, after_checksum)
        if tag in (Tag.COMPRESSED, Tag.CHANNEL_SYNC):
            raise self._fail(f"a {tag.name} record outside a multifd channel")
        if tag is Tag.MULTIFD_SETUP:
            return self._multifd(payload)
        if tag is Tag.MAPPED_BLOCK:
            return self._mapped_block(payload)
        if state is _State.NEED_CHECKSUM and tag is not Tag.CHECKSUM:
            raise self._fail(f"expected CHECKSUM after COMPLETE, got {tag.name}")
        if state is _State.NEED_EOF and tag is not Tag.EOF:
            raise self._fail(f"expected EOF after the final CHECKSUM, got {tag.name}")
        ps = self.header.page_size if self.header is not None else PAGE_SIZE
        if tag is Tag.RAM_RUN:
            if len(payload) < _RUN.size:
                raise self._fail("record RAM_RUN too short")
            start, count = _RUN.unpack_from(payload)
            self._expect_len(tag, payload, _RUN.size + count * ps)
            self._check_pages(tag, start, start + count)
            return RamRun(start, count, payload[_RUN.size :])
        if tag is Tag.RAM_LIST:
            if len(payload) < 4:
                raise self._fail("record RAM_LIST too short")
            (count,) = _U32.unpack_from(payload)
            self._expect_len(tag, payload, 4 + count * (8 + ps))
            split = 4 + 8 * count
            return RamList(
                self._indexes(tag, payload[4:split]),
                payload[split:],
            )
        if tag is Tag.ZERO_RUN:
            self._expect_len(tag, payload, _ZRUN.size)
            start, count = _ZRUN.unpack(payload)
            self._check_pages(tag, start, start + count)
            return ZeroRun(start, count)
        if tag is Tag.ZERO_LIST:
            if len(payload) < 4:
                raise self._fail("record ZERO_LIST too short")
            (count,) = _U32.unpack_from(payload)
            self._expect_len(tag, payload, 4 + 8 * count)
            return ZeroList(self._indexes(tag, payload[4:]))
        if tag is Tag.XBZRLE:
            if len(payload) < 8:
                raise self._fail("record XBZRLE too short")
            (index,) = _U64.unpack_from(payload)
            self._check_pages(tag, index, index + 1)
            if not 0 < len(payload) - 8 <= ps:
                raise self._fail(f"record XBZRLE: a delta of {len(payload) - 8} bytes")
            return XbzrlePage(index, bytes(payload[8:]))
        if tag is Tag.COMPRESSED_PAGE:
            if len(payload) < 8:
                raise self._fail("record COMPRESSED_PAGE too short")
            (index,) = _U64.unpack_from(payload)
            self._check_pages(tag, index, index + 1)
            if not 0 < len(payload) - 8 <= LEGACY_MAX_LENGTH:
                raise self._fail(f"Invalid compressed data length: {len(payload) - 8}")
            return CompressedPage(index, bytes(payload[8:]))
        if tag is Tag.DEVICE:
            return self._device(payload)
        if tag is Tag.SYNC:
            self._expect_len(tag, payload, 4)
            return SyncMarker(_U32.unpack(payload)[0])
        if tag is Tag.OPEN_RETURN_PATH:
            self._expect_len(tag, payload, 0)
            return OpenReturnPath()
        if tag is Tag.END_OF_PRECOPY:
            if len(payload) == 0:
                return EndOfPrecopy()
            self._expect_len(tag, payload, 1)
            if payload[0] > 2:
                raise self._fail(f"record END_OF_PRECOPY: unknown run state {payload[0]}")
            return EndOfPrecopy(running=payload[0] == 1, prelaunch=payload[0] == 2)
        if Tag.POSTCOPY_ADVISE <= tag <= Tag.POSTCOPY_RESUME:
            return self._postcopy_record(tag, payload)
        if tag is Tag.COMPLETE:
            if Tag.POSTCOPY_LISTEN in self._postcopy and Tag.POSTCOPY_RUN not in self._postcopy:
                raise self._fail("COMPLETE between POSTCOPY_LISTEN and POSTCOPY_RUN")
            if self._mapped_next and self._mapped_next != self._pages:
                raise self._fail(
                    f"mapped-ram blocks cover {self._mapped_next} of {self._pages} pages"
                )
            event = self._complete(payload)
            self._state = _State.NEED_CHECKSUM
            return event
        if tag is Tag.CHECKSUM:
            self._expect_len(tag, payload, 8)
            (value,) = _U64.unpack(payload)
            if value != checksum_before:
                raise self._fail(
                    f"checksum mismatch: stream says {value:016x}, "
                    f"received bytes hash to {checksum_before:016x}"
                )
            if state is _State.NEED_CHECKSUM:
                self._state = _State.NEED_EOF
            return Checkpoint(value)
        # Tag.EOF
        self._expect_len(tag, payload, 0)
        if state is not _State.NEED_EOF:
            raise self._fail("EOF before COMPLETE and its CHECKSUM")
        self._state = _State.DONE
        return EndOfStream()

    def _header(self, payload: bytes) -> StreamHeader:
        if len(payload) < _HEADER.size + 1:
            raise self._fail("record HEADER too short")
        flags, page_size, ram_size, fill, seed, algorithm = _HEADER.unpack_from(payload)
        name_len = payload[_HEADER.size]
        self._expect_len(Tag.HEADER, payload, _HEADER.size + 1 + name_len)
        if flags & ~_KNOWN_FLAGS:
            raise self._fail(f"unknown header flags 0x{flags:04x}")
        if page_size != PAGE_SIZE:
            raise self._fail(f"unsupported page size {page_size}")
        if ram_size % page_size:
            raise self._fail(f"bad RAM size {ram_size}")
        if fill not in _CODE_FILLS:
            raise self._fail(f"unknown guest fill code {fill}")
        if algorithm not in _CHECKSUMS:
            raise self._fail(f"unknown checksum algorithm {algorithm}")
        self._hash_pages = algorithm == CHECKSUM_XXH3_64
        try:
            profile = payload[_HEADER.size + 1 :].decode()
        except UnicodeDecodeError:
            raise self._fail("profile name is not UTF-8") from None
        self._pages = ram_size // page_size
        self.header = StreamHeader(
            version=VERSION,
            page_size=page_size,
            ram_size=ram_size,
            fill=_CODE_FILLS[fill],
            seed=seed,
            switchover_ack=bool(flags & FLAG_SWITCHOVER_ACK),
            return_path=bool(flags & FLAG_RETURN_PATH),
            profile=profile,
            mapped_ram=bool(flags & FLAG_MAPPED_RAM),
        )
        self._state = _State.BODY
        return self.header

    def _multifd(self, payload: bytes) -> MultifdSetup:
        self._expect_len(Tag.MULTIFD_SETUP, payload, _MULTIFD.size)
        if self._multifd_setup:
            raise self._fail("a second MULTIFD_SETUP record")
        channels, code, session = _MULTIFD.unpack(payload)
        if channels == 0 or code not in _CODE_COMPRESSION:
            raise self._fail(f"record MULTIFD_SETUP: bad channels {channels} or method {code}")
        self._multifd_setup = True
        return MultifdSetup(channels, _CODE_COMPRESSION[code], session)

    def _mapped_block(self, payload: bytes) -> MappedBlock:
        if self.header is None or not self.header.mapped_ram:
            raise self._fail("a MAPPED_BLOCK record in a stream without mapped-ram")
        self._expect_len(Tag.MAPPED_BLOCK, payload, _MAPPED.size)
        region = BlockRegion(*_MAPPED.unpack(payload))
        problem = check_region(region, expected_first=self._mapped_next, ram_pages=self._pages)
        if problem is not None:
            raise self._fail(problem)
        self._mapped_next = region.first_page + region.pages
        # what follows the record in the file is the block's bitmap and pages, not stream
        self._start = self._end = 0
        self._eof = False
        return MappedBlock(region)

    def _channel_hello(self, payload: bytes) -> ChannelHello:
        self._expect_len(Tag.CHANNEL, payload, _CHANNEL.size)
        channel_id, channels, session, ram_size = _CHANNEL.unpack(payload)
        if channel_id >= channels or ram_size % PAGE_SIZE:
            raise self._fail(f"record CHANNEL: bad channel {channel_id}/{channels}")
        self._pages = ram_size // PAGE_SIZE
        self._state = _State.BODY
        return ChannelHello(channel_id, channels, session, ram_size)

    def _channel_record(
        self, tag: Tag, payload: bytes, checksum_before: int, after_checksum: bool
    ) -> StreamEvent:
        """A record of a multifd channel (pages, syncs, checksums, the final EOF)."""
        if tag in (Tag.RAM_RUN, Tag.RAM_LIST, Tag.ZERO_RUN, Tag.ZERO_LIST, Tag.CHECKSUM):
            self._channel = False  # the main stream's rules for these records
            try:
                return self._dispatch(tag, payload, checksum_before)
            finally:
                self._channel = True
        if tag is Tag.CHANNEL_SYNC:
            self._expect_len(tag, payload, 4)
            return ChannelSync(_U32.unpack(payload)[0])
        if tag is Tag.COMPRESSED:
            if len(payload) < _COMPRESSED.size:
                raise self._fail("record COMPRESSED too short")
            code, count = _COMPRESSED.unpack_from(payload)
            end = _COMPRESSED.size + 8 * count
            if code not in _CODE_COMPRESSION or code == 0 or count == 0 or len(payload) < end:
                raise self._fail(f"record COMPRESSED: bad method {code} or {count} pages")
            indexes = self._indexes(tag, bytes(payload[_COMPRESSED.size : end]))
            return CompressedPages(_CODE_COMPRESSION[code], indexes, bytes(payload[end:]))
        if tag is Tag.EOF:
            self._expect_len(tag, payload, 0)
            if not after_checksum:
                raise self._fail("EOF of a multifd channel without its CHECKSUM")
            self._state = _State.DONE
            return EndOfStream()
        raise self._fail(f"a {tag.name} record on a multifd channel")

    def _recover(self, payload: bytes) -> Recover:
        self._expect_len(Tag.RECOVER, payload, _RECOVER.size)
        (ram_size,) = _RECOVER.unpack(payload)
        if ram_size % PAGE_SIZE:
            raise self._fail(f"bad RAM size {ram_size}")
        self._pages = ram_size // PAGE_SIZE
        self._state = _State.BODY
        return Recover(ram_size)

    def _postcopy_record(self, tag: Tag, payload: bytes) -> StreamEvent:
        """The postcopy records, each once and in order: ADVISE (setup), DISCARD, LISTEN,
        RUN (the switch); on a recovery connection only RESUME."""
        seen = self._postcopy
        if tag in seen:
            raise self._fail(f"a second {tag.name} record")
        needs = {
            Tag.POSTCOPY_DISCARD: Tag.POSTCOPY_ADVISE,
            Tag.POSTCOPY_LISTEN: Tag.POSTCOPY_DISCARD,
            Tag.POSTCOPY_RUN: Tag.POSTCOPY_LISTEN,
        }
        if self._recovery != (tag is Tag.POSTCOPY_RESUME):
            raise self._fail(f"record {tag.name} out of place on this connection")
        before = needs.get(tag)
        if before is not None and before not in seen:
            raise self._fail(f"record {tag.name} before {before.name}")
        seen.add(tag)
        if tag is Tag.POSTCOPY_DISCARD:
            size = (self._pages + 7) // 8
            self._expect_len(tag, payload, size)
            spare = size * 8 - self._pages
            if spare and payload[-1] >> (8 - spare):
                raise self._fail("record POSTCOPY_DISCARD: bits beyond the last page")
            return PostcopyDiscard(bytes(payload))
        if tag is Tag.POSTCOPY_RUN:
            self._expect_len(tag, payload, 1)
            if payload[0] > 1:
                raise self._fail(f"record POSTCOPY_RUN: unknown run state {payload[0]}")
            return PostcopyRun(running=bool(payload[0]))
        self._expect_len(tag, payload, 0)
        if tag is Tag.POSTCOPY_ADVISE:
            return PostcopyAdvise()
        if tag is Tag.POSTCOPY_LISTEN:
            return PostcopyListen()
        return PostcopyResume()

    def _device(self, payload: bytes) -> DeviceData:
        if len(payload) < _DEV.size:
            raise self._fail("record DEVICE too short")
        kind, flags, name_len = _DEV.unpack_from(payload)
        head = _DEV.size + name_len + 8
        if name_len == 0 or len(payload) < head:
            raise self._fail("record DEVICE too short")
        if kind not in DeviceChunkKind.__members__.values() or flags & ~1:
            raise self._fail(f"record DEVICE: unknown chunk kind {kind} or flags {flags}")
        chunk_kind = DeviceChunkKind(kind)
        try:
            name = payload[_DEV.size : _DEV.size + name_len].decode()
        except UnicodeDecodeError:
            raise self._fail("record DEVICE: device id is not UTF-8") from None
        (offset,) = _U64.unpack_from(payload, _DEV.size + name_len)
        data = payload[head:]
        no_data = chunk_kind in (DeviceChunkKind.INIT_DATA_SENT, DeviceChunkKind.END)
        if (no_data and (data or offset)) or (flags and chunk_kind is not DeviceChunkKind.FINAL):
            raise self._fail(f"record DEVICE: malformed {chunk_kind.name} chunk")
        return DeviceData(DeviceChunk(name, chunk_kind, offset, data, bool(flags)))

    def _complete(self, payload: bytes) -> Complete:
        if len(payload) < 34:
            raise self._fail("record COMPLETE too short")
        ram = payload[:32].hex()
        (count,) = _U16.unpack_from(payload, 32)
        pos = 34
        devices: list[tuple[str, str]] = []
        for _ in range(count):
            if pos >= len(payload):
                raise self._fail("record COMPLETE too short")
            n = payload[pos]
            if n == 0 or pos + 1 + n + 32 > len(payload):
                raise self._fail("record COMPLETE: bad device entry")
            try:
                name = payload[pos + 1 : pos + 1 + n].decode()
            except UnicodeDecodeError:
                raise self._fail("record COMPLETE: device id is not UTF-8") from None
            devices.append((name, payload[pos + 1 + n : pos + 1 + n + 32].hex()))
            pos += 1 + n + 32
        if pos != len(payload):
            raise self._fail("record COMPLETE: trailing bytes")
        return Complete(ram, tuple(devices))


# ---- glue with the guest ---------------------------------------------------------------------


def guest_for_header(
    header: StreamHeader,
    firmware_pages: npt.ArrayLike = (),
    firmware_content: FirmwareContent | None = None,
) -> GuestMemory:
    """A destination RAM with the source's size and baseline (needed for equal digests).

    ``firmware_pages``, ``firmware_content``: the destination machine's idle layout, used when
    the source's guest started ``idle`` (both sides must run the same machine, as QEMU
    requires).
    """
    if header.fill == "idle":
        return GuestMemory(
            header.ram_size,
            fill="idle",
            seed=header.seed,
            firmware_pages=firmware_pages,
            firmware_content=firmware_content,
        )
    return GuestMemory(header.ram_size, fill=header.fill, seed=header.seed)


def encode_guest_pages(
    encoder: StreamEncoder,
    guest: GuestMemory,
    indexes: npt.ArrayLike,
    *,
    max_pages: int = 256,
    min_run: int = 16,
) -> list[bytes]:
    """Records for the given sorted pages of ``guest``, with zero-page detection.

    Zero pages become ``ZERO_RUN``/``ZERO_LIST`` (no data); runs of at least ``min_run``
    consecutive non-zero pages become ``RAM_RUN`` records of at most ``max_pages``; scattered
    non-zero pages are grouped into ``RAM_LIST`` records.  Feed it ~``max_pages`` pages at a
    time (the caller rate-limits); it returns one ``bytes`` per record.
    """
    idx = np.asarray(indexes, dtype=np.int64)
    if idx.size == 0:
        return []
    zero = guest.zero_mask(idx)
    # Segment boundaries: a gap in the indexes or a change zero <-> non-zero.
    cut = np.flatnonzero((np.diff(idx) != 1) | (zero[1:] != zero[:-1])) + 1
    starts = np.concatenate(([0], cut)).tolist()
    ends = np.concatenate((cut, [idx.size])).tolist()
    out: list[bytes] = []
    scattered_zero: list[int] = []
    scattered: list[int] = []
    for s, e in zip(starts, ends, strict=True):
        first, count = int(idx[s]), e - s
        if zero[s]:
            if count >= min_run:
                out.append(encoder.zero_run(first, count))
            else:
                scattered_zero.extend(range(first, first + count))
        elif count >= min_run:
            for off in range(0, count, max_pages):
                n = min(max_pages, count - off)
                out.append(encoder.ram_run(first + off, guest.read_pages(first + off, n)))
        else:
            scattered.extend(range(first, first + count))
    for off in range(0, len(scattered), max_pages):
        part = scattered[off : off + max_pages]
        out.append(encoder.ram_list(part, guest.read_page_list(part)))
    for off in range(0, len(scattered_zero), 1 << 16):
        out.append(encoder.zero_list(scattered_zero[off : off + (1 << 16)]))
    return out


@dataclass(slots=True)
class EncodedPages:
    """What :func:`encode_guest_pages_parts` produced: buffers to write, and page counts."""

    parts: list[Part]
    nbytes: int
    zero_pages: int
    normal_pages: int


def encode_guest_pages_parts(
    encoder: StreamEncoder,
    guest: GuestMemory,
    indexes: npt.ArrayLike,
    *,
    zero: npt.NDArray[np.bool_] | None = None,
    max_pages: int = 2048,
    min_run: int = 16,
    deferred: bool = False,
) -> EncodedPages:
    """:func:`encode_guest_pages` for a gather write: the same records, as buffers.

    Runs of non-zero pages are read straight into one array per record and handed over
    without a copy (``deferred``: read later by the writer thread, see
    :class:`~qmp_server.engine.page_run.PageRun`; runs, not lists, and only when the
    checksum leaves page contents out); ``zero`` (the guest's
    :meth:`~GuestMemory.zero_mask` of ``indexes``) may be passed when the caller already
    has it.  Records carry at most ``max_pages`` pages.
    """
    idx = np.asarray(indexes, dtype=np.int64)
    parts: list[Part] = []
    before = encoder.bytes_encoded
    defer = deferred and encoder.defers_pages

    def run(start: int, count: int) -> Buffer | PageRun:
        return PageRun(guest, start, count) if defer else guest.read_pages_view(start, count)

    if idx.size == 0:
        return EncodedPages(parts, 0, 0, 0)
    if zero is None:
        zero = guest.zero_mask(idx)
    zero_pages = int(np.count_nonzero(zero))
    if idx.size == 1 or (int(idx[-1]) - int(idx[0]) + 1 == idx.size and not zero.any()):
        # the common first-pass case: one contiguous non-zero (or single) run
        if zero_pages:
            parts += encoder._record_parts(Tag.ZERO_RUN, _ZRUN.pack(int(idx[0]), 1))
        else:
            first = int(idx[0])
            for off in range(0, idx.size, max_pages):
                n = min(max_pages, idx.size - off)
                parts += encoder.ram_run_parts(first + off, run(first + off, n))
        return EncodedPages(parts, encoder.bytes_encoded - before, zero_pages,
                            idx.size - zero_pages)  # fmt: skip
    cut = np.flatnonzero((np.diff(idx) != 1) | (zero[1:] != zero[:-1])) + 1
    starts = np.concatenate(([0], cut)).tolist()
    ends = np.concatenate((cut, [idx.size])).tolist()
    firsts = idx[starts].tolist()
    zeros = zero[starts].tolist()
    scattered_zero: list[int] = []
    scattered: list[int] = []
    for s, e, first, is_zero in zip(starts, ends, firsts, zeros, strict=True):
        count = e - s
        if is_zero:
            if count >= min_run:
                parts += encoder._record_parts(Tag.ZERO_RUN, _ZRUN.pack(first, count))
            else:
                scattered_zero.extend(range(first, first + count))
        elif count >= min_run:
            for off in range(0, count, max_pages):
                n = min(max_pages, count - off)
                parts += encoder.ram_run_parts(first + off, run(first + off, n))
        else:
            scattered.extend(range(first, first + count))
    for off in range(0, len(scattered), max_pages):
        part = scattered[off : off + max_pages]
        parts += encoder.ram_list_parts(part, guest.read_page_list(part))
    for off in range(0, len(scattered_zero), 1 << 16):
        parts += encoder._record_parts(
            Tag.ZERO_LIST, *_zero_list_fields(scattered_zero[off : off + (1 << 16)])
        )
    return EncodedPages(parts, encoder.bytes_encoded - before, zero_pages, idx.size - zero_pages)


def _zero_list_fields(indexes: list[int]) -> tuple[bytes, bytes]:
    idx = np.asarray(indexes, dtype=_LE64)
    return _U32.pack(idx.size), idx.tobytes()


def apply_ram_event(guest: GuestMemory, event: object) -> bool:
    """Load a RAM record into ``guest``; return False for non-RAM events (left to the caller)."""
    if isinstance(event, RamRun):
        guest.load_pages(event.start, event.data)
    elif isinstance(event, ZeroRun):
        guest.load_zero_pages(event.start, event.count)
    elif isinstance(event, RamList):
        guest.load_page_list(event.indexes, event.data)
    elif isinstance(event, ZeroList):
        guest.load_zero_page_list(event.indexes)
    elif isinstance(event, CompressedPage):
        try:
            page = LegacyPageCompressor.decompress_page(event.data)
        except ValueError as err:
            raise StreamError(f"page {event.index}: {err}") from None
        guest.load_page_list([event.index], page)
    elif isinstance(event, XbzrlePage):
        try:
            page = decode_xbzrle(event.delta, guest.read_page(event.index))
        except ValueError as err:
            raise StreamError(f"page {event.index}: {err}") from None
        guest.load_page_list([event.index], page)
    else:
        return False
    return True


# ---- return path -----------------------------------------------------------------------------


class RpTag(enum.IntEnum):
    OPEN = 0x01
    SWITCHOVER_ACK = 0x02
    RESUMED = 0x03
    SHUT = 0x04
    REQ_PAGES = 0x05
    RECV_BITMAP = 0x06
    BITMAP_END = 0x07


_RP = struct.Struct("<BB")  # tag, payload length
_F64 = struct.Struct("<d")
RP_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class RpOpen:
    """The destination opened the return path (first message)."""

    version: int


@dataclass(frozen=True, slots=True)
class RpSwitchoverAck:
    """Every device that needed it has approved: the source may switch over."""


@dataclass(frozen=True, slots=True)
class RpResumed:
    """The destination guest runs; ``timestamp`` is the destination's monotonic clock."""

    timestamp: float | None


@dataclass(frozen=True, slots=True)
class RpShut:
    """The destination is done with the return path; ``status`` 0 means success."""

    status: int


@dataclass(frozen=True, slots=True)
class RpReqPages:
    """Postcopy: the destination guest waits for ``count`` pages from ``start``."""

    start: int
    count: int


@dataclass(frozen=True, slots=True)
class RpRecvBitmap:
    """Postcopy recovery: a piece of the destination's bitmap of pages still missing
    (1 bit per page, LSB first), ``offset`` bytes into it."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RpBitmapEnd:
    """The missing-page bitmap is complete: ``size`` bytes in all."""

    size: int


@dataclass(frozen=True, slots=True)
class RpClosed:
    """The destination closed the connection; ``clean`` when a ``SHUT`` came first."""

    clean: bool


ReturnPathEvent = (
    RpOpen
    | RpSwitchoverAck
    | RpResumed
    | RpShut
    | RpReqPages
    | RpRecvBitmap
    | RpBitmapEnd
    | RpClosed
)
#: The largest bitmap piece one RECV_BITMAP message carries.
RP_BITMAP_CHUNK: Final = 240
_REQ = struct.Struct("<QI")  # start, count


class ReturnPathEncoder:
    """Destination -> source messages: ``tag u8 | length u8 | payload``."""

    @staticmethod
    def open() -> bytes:
        return _RP.pack(RpTag.OPEN, 2) + _U16.pack(RP_VERSION)

    @staticmethod
    def switchover_ack() -> bytes:
        return _RP.pack(RpTag.SWITCHOVER_ACK, 0)

    @staticmethod
    def resumed(timestamp: float | None = None) -> bytes:
        if timestamp is None:
            return _RP.pack(RpTag.RESUMED, 0)
        return _RP.pack(RpTag.RESUMED, 8) + _F64.pack(timestamp)

    @staticmethod
    def shut(status: int = 0) -> bytes:
        return _RP.pack(RpTag.SHUT, 4) + _U32.pack(status)

    @staticmethod
    def req_pages(start: int, count: int) -> bytes:
        return _RP.pack(RpTag.REQ_PAGES, _REQ.size) + _REQ.pack(start, count)

    @staticmethod
    def recv_bitmap(bitmap: bytes) -> bytes:
        """The whole bitmap: RECV_BITMAP pieces, then BITMAP_END."""
        out = []
        for offset in range(0, len(bitmap), RP_BITMAP_CHUNK):
            piece = bitmap[offset : offset + RP_BITMAP_CHUNK]
            out.append(_RP.pack(RpTag.RECV_BITMAP, 4 + len(piece)) + _U32.pack(offset) + piece)
        out.append(_RP.pack(RpTag.BITMAP_END, 4) + _U32.pack(len(bitmap)))
        return b"".join(out)


class ReturnPathDecoder:
    """Source side of the return path; same verbs and error rules as :class:`StreamDecoder`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self._shut = False
        self._closed_reported = False
        self._opened = False
        self._error: StreamError | None = None
        self._bitmap_bytes = 0

    def receive_data(self, data: Buffer) -> None:
        if len(data) == 0:
            self._eof = True
        else:
            self._buf += data

    def next_event(self) -> ReturnPathEvent | NeedData:
        """:raise StreamError: on an unknown message, a bad length, or truncation."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except StreamError as err:
            self._error = err
            raise

    def _next(self) -> ReturnPathEvent | NeedData:
        buf = self._buf
        if len(buf) < _RP.size or len(buf) < _RP.size + buf[1]:
            if not self._eof:
                return NEED_DATA
            if buf:
                raise StreamError(f"return path truncated: {len(buf)} bytes of a message")
            if self._closed_reported:
                return NEED_DATA
            self._closed_reported = True
            return RpClosed(clean=self._shut)
        tag, length = _RP.unpack_from(buf)
        payload = bytes(buf[_RP.size : _RP.size + length])
        del buf[: _RP.size + length]
        if self._shut:
            raise StreamError("return path message after SHUT")
        expected: dict[int, tuple[int, ...]] = {
            RpTag.OPEN: (2,),
            RpTag.SWITCHOVER_ACK: (0,),
            RpTag.RESUMED: (0, 8),
            RpTag.SHUT: (4,),
            RpTag.REQ_PAGES: (_REQ.size,),
            RpTag.BITMAP_END: (4,),
        }
        if tag == RpTag.RECV_BITMAP:
            if not 4 < length <= 4 + RP_BITMAP_CHUNK:
                raise StreamError(f"return path message RECV_BITMAP with bad length {length}")
        elif tag not in expected:
            raise StreamError(f"unknown return path message 0x{tag:02x}")
        elif length not in expected[tag]:
            raise StreamError(f"return path message {RpTag(tag).name} with bad length {length}")
        if tag == RpTag.OPEN:
            if self._opened:
                raise StreamError("return path OPEN received twice")
            self._opened = True
            return RpOpen(_U16.unpack(payload)[0])
        if not self._opened:
            raise StreamError(f"return path {RpTag(tag).name} before OPEN")
        if tag == RpTag.SWITCHOVER_ACK:
            return RpSwitchoverAck()
        if tag == RpTag.RESUMED:
            return RpResumed(_F64.unpack(payload)[0] if payload else None)
        if tag == RpTag.REQ_PAGES:
            start, count = _REQ.unpack(payload)
            if count == 0:
                raise StreamError("return path REQ_PAGES for no page")
            return RpReqPages(start, count)
        if tag == RpTag.RECV_BITMAP:
            (offset,) = _U32.unpack_from(payload)
            if offset != self._bitmap_bytes:
                raise StreamError(
                    f"return path RECV_BITMAP at offset {offset}, expected {self._bitmap_bytes}"
                )
            self._bitmap_bytes += length - 4
            return RpRecvBitmap(offset, payload[4:])
        if tag == RpTag.BITMAP_END:
            (size,) = _U32.unpack(payload)
            if size != self._bitmap_bytes:
                raise StreamError(
                    f"return path BITMAP_END says {size} bytes, {self._bitmap_bytes} came"
                )
            self._bitmap_bytes = 0
            return RpBitmapEnd(size)
        self._shut = True
        return RpShut(_U32.unpack(payload)[0])
