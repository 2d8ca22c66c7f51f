"""Check that qmp_server.engine.compression produces QEMU's bytes, using QEMU's own libraries.

Why: the compressed size of a packet depends on the library version and on how it is driven.
This script loads the very libz / libzstd shared objects that QEMU 7.2 (host) and QEMU 10.0
(the trixie chroot) link, drives them through ctypes with QEMU's call sequence (one stream per
channel; per page deflate(Z_NO_FLUSH) / ZSTD_compressStream2(ZSTD_e_continue), the last page
of a packet with Z_SYNC_FLUSH / ZSTD_e_flush; legacy: deflateReset + deflate(Z_FINISH) per
page) and compares every packet with what our compressor emits.

    python tools/check_compression_parity.py [--pages 4096] [--fill text|random] [--level 1]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

from qmp_server.engine.compression import (
    PAGE_SIZE,
    LegacyPageCompressor,
    Method,
    MultifdCompressor,
)
from qmp_server.engine.guest import baseline_words

PACKET_PAGES = 128  # MULTIFD_PACKET_SIZE / 4 KiB
LIBS = {
    "qemu-7.2 (host)": ("/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libzstd.so.1"),
    "qemu-10.0 (trixie)": (
        "/srv/trixie/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/srv/trixie/usr/lib/x86_64-linux-gnu/libzstd.so.1",
    ),
}
Z_NO_FLUSH, Z_SYNC_FLUSH, Z_FINISH = 0, 2, 4
Z_OK, Z_STREAM_END = 0, 1


class ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


class ZstdIn(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class ZstdOut(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class LibZ:
    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.zlibVersion.restype = ctypes.c_char_p
        self.version = self.lib.zlibVersion().decode()

    def deflate_init(self, level: int) -> ZStream:
        zs = ZStream()
        ret = self.lib.deflateInit_(ctypes.byref(zs), level, self.version.encode(),
                                    ctypes.sizeof(ZStream))  # fmt: skip
        assert ret == Z_OK, ret
        return zs

    def multifd_packet(self, zs: ZStream, pages: bytes, out: Any) -> bytes:
        """QEMU's zlib send_prepare for one packet."""
        size = 0
        count = len(pages) // PAGE_SIZE
        src = ctypes.create_string_buffer(pages, len(pages))
        for i in range(count):
            zs.next_in = ctypes.addressof(src) + i * PAGE_SIZE
            zs.avail_in = PAGE_SIZE
            zs.next_out = ctypes.addressof(out) + size
            zs.avail_out = len(out) - size
            flush = Z_SYNC_FLUSH if i == count - 1 else Z_NO_FLUSH
            while True:
                ret = self.lib.deflate(ctypes.byref(zs), flush)
                if not (ret == Z_OK and zs.avail_in and zs.avail_out):
                    break
            assert ret == Z_OK and zs.avail_in == 0, ret
            size = len(out) - zs.avail_out
        return bytes(out[:size])

    def legacy_page(self, zs: ZStream, page: bytes) -> bytes:
        """7.2's qemu_compress_data: deflateReset, one deflate(Z_FINISH)."""
        out = ctypes.create_string_buffer(8192)
        src = ctypes.create_string_buffer(page, len(page))
        assert self.lib.deflateReset(ctypes.byref(zs)) == Z_OK
        zs.next_in, zs.avail_in = ctypes.addressof(src), len(page)
        zs.next_out, zs.avail_out = ctypes.addressof(out), len(out)
        assert self.lib.deflate(ctypes.byref(zs), Z_FINISH) == Z_STREAM_END
        return bytes(out[: len(out) - zs.avail_out])


class LibZstd:
    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.ZSTD_versionString.restype = ctypes.c_char_p
        self.version = self.lib.ZSTD_versionString().decode()
        self.lib.ZSTD_createCStream.restype = ctypes.c_void_p
        self.lib.ZSTD_initCStream.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib.ZSTD_initCStream.restype = ctypes.c_size_t
        self.lib.ZSTD_compressStream2.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_void_p, ctypes.c_int]  # fmt: skip
        self.lib.ZSTD_compressStream2.restype = ctypes.c_size_t
        self.lib.ZSTD_isError.argtypes = [ctypes.c_size_t]

    def cstream(self, level: int) -> int:
        zcs = self.lib.ZSTD_createCStream()
        assert not self.lib.ZSTD_isError(self.lib.ZSTD_initCStream(zcs, level))
        return int(zcs)

    def multifd_packet(self, zcs: int, pages: bytes, out: Any) -> bytes:
        """QEMU's zstd send_prepare for one packet."""
        count = len(pages) // PAGE_SIZE
        src = ctypes.create_string_buffer(pages, len(pages))
        zout = ZstdOut(ctypes.addressof(out), len(out), 0)
        for i in range(count):
            zin = ZstdIn(ctypes.addressof(src) + i * PAGE_SIZE, PAGE_SIZE, 0)
            flush = 1 if i == count - 1 else 0  # ZSTD_e_flush / ZSTD_e_continue
            while True:
                ret = self.lib.ZSTD_compressStream2(zcs, ctypes.byref(zout), ctypes.byref(zin),
                                                    flush)  # fmt: skip
                if not (ret > 0 and zin.size - zin.pos > 0 and zout.size - zout.pos > 0):
                    break
            assert not self.lib.ZSTD_isError(ret) and zin.pos == zin.size
        return bytes(out[: zout.pos])


def packets(fill: str, pages: int) -> Iterator[bytes]:
    for start in range(0, pages, PACKET_PAGES):
        count = min(PACKET_PAGES, pages - start)
        yield baseline_words(fill, 1, start, count).tobytes()  # type: ignore[arg-type]


def check(name: str, zpath: str, zstdpath: str, fill: str, pages: int, level: int) -> bool:
    try:
        libz, libzstd = LibZ(zpath), LibZstd(zstdpath)
    except OSError as exc:
        print(f"{name}: cannot load the libraries ({exc})")
        return True
    ok = True
    out = ctypes.create_string_buffer(2 * PACKET_PAGES * PAGE_SIZE)
    for method in ("zlib", "zstd"):
        m: Method = method  # type: ignore[assignment]
        ours = MultifdCompressor(m, level)
        zs = libz.deflate_init(level) if method == "zlib" else None
        zcs = libzstd.cstream(level) if method == "zstd" else 0
        same = total_ours = total_theirs = raw = 0
        for pkt in packets(fill, pages):
            theirs = (libz.multifd_packet(zs, pkt, out) if zs is not None
                      else libzstd.multifd_packet(zcs, pkt, out))  # fmt: skip
            mine = ours.compress(pkt, len(pkt) // PAGE_SIZE)
            same += mine == theirs
            total_ours += len(mine)
            total_theirs += len(theirs)
            raw += len(pkt)
        n = -(-pages // PACKET_PAGES)
        version = libz.version if method == "zlib" else libzstd.version
        print(
            f"{name}: multifd {method} {version} level {level}: {same}/{n} packets identical,"
            f" sizes {total_ours} vs {total_theirs} ({total_theirs / raw:.3f} of {raw})"
        )
        ok &= same == n
    zs = libz.deflate_init(level)
    legacy = LegacyPageCompressor(level)
    same = count = 0
    for pkt in packets(fill, min(pages, 1024)):
        for i in range(len(pkt) // PAGE_SIZE):
            page = pkt[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
            same += legacy.compress_page(page) == libz.legacy_page(zs, page)
            count += 1
    print(f"{name}: legacy compress zlib {libz.version} level {level}: "
          f"{same}/{count} pages identical")  # fmt: skip
    return ok and same == count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=4096)
    ap.add_argument("--fill", choices=("text", "random"), default="text")
    ap.add_argument("--level", type=int, default=1)
    args = ap.parse_args()
    ok = True
    for name, (zpath, zstdpath) in LIBS.items():
        if os.path.exists(zpath):
            ok &= check(name, zpath, zstdpath, args.fill, args.pages, args.level)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
