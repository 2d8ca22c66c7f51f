"""``qmp-migrate``'s parallel and compression options, as ``virsh migrate`` takes them.

Why a module: libvirt turns ``--parallel``, ``--parallel-connections`` and ``--compressed``
with ``--comp-methods`` into capabilities and parameters on *both* sides, and refuses
combinations before it sends anything; this is that translation, without I/O.

- ``--parallel``: ``multifd`` on both sides; ``--parallel-connections N`` sets
  ``multifd-channels`` on both (libvirt's default leaves QEMU's, 2).
- ``--compressed``: ``--comp-methods`` (default ``xbzrle``) is a comma list: ``xbzrle`` (the
  capability on both), ``mt`` (7.2's ``compress`` capability on both), ``zlib``/``zstd``
  (``multifd-compression`` on both; only with ``--parallel``, and one of them).
- Levels and sizes: ``--comp-zlib-level``, ``--comp-zstd-level``, ``--comp-mt-level``,
  ``--comp-mt-threads``, ``--comp-xbzrle-cache`` set the matching parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COMPRESSION_METHODS", "Tuning", "TuningError"]

COMPRESSION_METHODS = ("xbzrle", "mt", "zlib", "zstd")


class TuningError(ValueError):
    """A combination libvirt refuses (worded as virsh shows it)."""


@dataclass
class Tuning:
    parallel: bool = False
    connections: int | None = None
    compressed: bool = False
    methods: tuple[str, ...] = ()
    zlib_level: int | None = None
    zstd_level: int | None = None
    mt_level: int | None = None
    mt_threads: int | None = None
    xbzrle_cache: int | None = None

    @classmethod
    def from_options(
        cls,
        *,
        parallel: bool,
        connections: int | None,
        compressed: bool,
        methods: str | None,
        **levels: int | None,
    ) -> Tuning:
        names = tuple(m.strip() for m in (methods or "").split(",") if m.strip())
        for name in names:
            if name not in COMPRESSION_METHODS:
                raise TuningError(f"invalid argument: Unsupported compression method '{name}'")
        if names and not compressed:
            raise TuningError("invalid argument: --comp-methods requires --compressed")
        if compressed and not names:
            names = ("xbzrle",)
        if connections is not None and not parallel:
            raise TuningError(
                "invalid argument: Turn parallel migration on to tune it (--parallel)"
            )
        multifd_methods = [n for n in names if n in ("zlib", "zstd")]
        if multifd_methods and not parallel:
            raise TuningError(
                f"invalid argument: Compression method '{multifd_methods[0]}' is only "
                "supported with parallel migration"
            )
        if len(multifd_methods) > 1:
            raise TuningError("invalid argument: Only one compression method can be specified "
                              "with parallel compression")  # fmt: skip
        return cls(parallel=parallel, connections=connections, compressed=compressed,
                   methods=names, **levels)  # fmt: skip

    @property
    def multifd_compression(self) -> str | None:
        return next((m for m in self.methods if m in ("zlib", "zstd")), None)

    def capabilities(self) -> set[str]:
        """The capabilities turned on, on both sides."""
        on = set()
        if self.parallel:
            on.add("multifd")
        if "xbzrle" in self.methods:
            on.add("xbzrle")
        if "mt" in self.methods:
            on.add("compress")
        return on

    def missing(self, capabilities: Sequence[str]) -> str | None:
        """The first capability this tuning needs that a side does not list."""
        return next((c for c in sorted(self.capabilities()) if c not in capabilities), None)

    def parameters(self) -> dict[str, Any]:
        """The parameters set, on both sides."""
        params: dict[str, Any] = {}
        if self.connections is not None:
            params["multifd-channels"] = self.connections
        if self.multifd_compression is not None:
            params["multifd-compression"] = self.multifd_compression
        for key, value in (
            ("multifd-zlib-level", self.zlib_level),
            ("multifd-zstd-level", self.zstd_level),
            ("compress-level", self.mt_level),
            ("compress-threads", self.mt_threads),
            ("xbzrle-cache-size", self.xbzrle_cache),
        ):
            if value is not None:
                params[key] = value
        return params
