"""``vfio-sim``: a device with precopy initial data, and the destination's switchover-ACK gate.

Contract: pure.  Time is an argument (``now``, seconds, any monotonic origin); the load work
on the destination is a deadline reported by :meth:`VfioSimLoader.next_deadline` for the
adapter to sleep on.  Neighbours: the migration engine (drives save/load), the stream codec
(:class:`DeviceChunkKind` is the device-section chunk kind), ``-device`` parsing in the CLI.

The model, after a VFIO device with pre-copy support:

* The device has ``initial_bytes`` of *initial data* (what the VFIO uAPI calls the precopy
  initial bytes: data the destination needs early to allocate resources) and ``state_bytes``
  of *state*, cut into 4 KiB blocks that the device dirties at ``dirty_rate`` bytes/s while
  the guest runs.  Both contents are deterministic from ``(id, seed)`` and the writes.
* Source, precopy (:meth:`VfioSimDevice.save_iterate`): first the initial data in chunks
  (``INITIAL``); then, when switchover-ack is on, one ``INIT_DATA_SENT`` marker (QEMU's stream
  tag for this is ``VFIO_MIG_FLAG_DEV_INIT_DATA_SENT``); then dirty state blocks (``DIRTY``;
  at setup every block is dirty).  Stop-and-copy (:meth:`VfioSimDevice.save_complete`):
  anything not sent yet (``FINAL``) and an ``END`` marker.
* Destination (:class:`VfioSimLoader`): the initial data is complete at ``INIT_DATA_SENT``
  (capability on) and the load work starts then: ``loaded_at = now + load_ms/1000``; when it
  passes, the loader approves the switchover once (:class:`SwitchoverAckGate`).  Without the
  capability the load work starts at ``END``, i.e. inside stop-and-copy, and the destination
  cannot resume before it is done (:meth:`VfioSimLoader.ready`).

Device digest (v1): ``sha256("qmp-server-vfio-sim-v1\\0" || id || "\\0" ||
u64 initial length || sha256(initial data) || u64 state length || state bytes)``, integers
little-endian.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from dataclasses import dataclass

import numpy as np

from qmp_server.engine.sizes import parse_size

__all__ = [
    "BLOCK_SIZE",
    "MAX_CHUNK",
    "DeviceChunk",
    "DeviceChunkKind",
    "DeviceLoadError",
    "SwitchoverAckGate",
    "VfioSimConfig",
    "VfioSimDevice",
    "VfioSimLoader",
    "check_unique_ids",
    "parse_device",
]

BLOCK_SIZE = 4096
#: Largest data chunk a device emits (initial data and state are cut at this size).
MAX_CHUNK = 1 << 20
_MASK64 = (1 << 64) - 1


class DeviceChunkKind(enum.IntEnum):
    """Kinds of device-section chunks; the values are the stream's kind byte."""

    INITIAL = 1  #: a piece of the initial data, at ``offset`` in it
    INIT_DATA_SENT = 2  #: all initial data was sent (only with switchover-ack); no data
    DIRTY = 3  #: precopy: state bytes at ``offset`` in the state
    FINAL = 4  #: stop-and-copy: state (or late initial) bytes at ``offset``
    END = 5  #: end of this device's state; no data


@dataclass(frozen=True, slots=True)
class DeviceChunk:
    """One piece of a device's migration data."""

    device_id: str
    kind: DeviceChunkKind
    offset: int = 0
    data: bytes = b""
    #: For ``FINAL``: True when the bytes are initial data that precopy had not sent.
    initial: bool = False


class DeviceLoadError(ValueError):
    """The destination got device data it cannot accept (message in QEMU's style)."""


@dataclass(frozen=True, slots=True)
class VfioSimConfig:
    """The ``-device vfio-sim,...`` properties."""

    id: str
    initial_bytes: int = 64 << 20
    state_bytes: int = 1 << 20
    load_ms: int = 100
    dirty_rate: int = 0


_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*\Z")
_SIZE_PROPS = {"initial-bytes", "state-bytes", "dirty-rate"}
_PROPS = ("id", "initial-bytes", "state-bytes", "load-ms", "dirty-rate")


def parse_device(text: str) -> VfioSimConfig:
    """Parse a ``-device`` argument for ``vfio-sim``.

    Error texts (QEMU's wording where QEMU has the case; verified against QEMU sources only
    for the first three, the others are our best reading of the keyval visitor):

    * ``'DRIVER' is not a valid device model name`` (another driver);
    * ``Property 'vfio-sim.NAME' not found`` (unknown property);
    * ``Parameter 'id' is missing``; ``Parameter 'id' expects an identifier``;
    * ``Parameter 'NAME' expects size`` (bad size), ``Parameter 'load-ms' expects uint32``.

    :raise ValueError: with one of the texts above.

    >>> config = parse_device("vfio-sim,id=nic0,initial-bytes=300M,load-ms=1480")
    >>> config.id, config.initial_bytes, config.load_ms
    ('nic0', 314572800, 1480)
    """
    driver, _, rest = text.partition(",")
    if driver.startswith("driver="):
        driver = driver[len("driver=") :]
    if driver != "vfio-sim":
        raise ValueError(f"'{driver}' is not a valid device model name")
    props: dict[str, str] = {}
    for item in rest.split(",") if rest else []:
        name, eq, value = item.partition("=")
        if name not in _PROPS:
            raise ValueError(f"Property 'vfio-sim.{name}' not found")
        props[name] = value if eq else "on"
    if "id" not in props:
        raise ValueError("Parameter 'id' is missing")
    if not _ID_RE.match(props["id"]):
        raise ValueError("Parameter 'id' expects an identifier")
    values: dict[str, int] = {}
    for name in _SIZE_PROPS & props.keys():
        try:
            values[name] = parse_size(props[name], "b", name=name)
        except ValueError:
            raise ValueError(f"Parameter '{name}' expects size") from None
    if "load-ms" in props:
        raw = props["load-ms"]
        if not raw.isdigit() or int(raw) >= 1 << 32:
            raise ValueError("Parameter 'load-ms' expects uint32")
        values["load-ms"] = int(raw)
    defaults = VfioSimConfig(id=props["id"])
    return VfioSimConfig(
        id=props["id"],
        initial_bytes=values.get("initial-bytes", defaults.initial_bytes),
        state_bytes=values.get("state-bytes", defaults.state_bytes),
        load_ms=values.get("load-ms", defaults.load_ms),
        dirty_rate=values.get("dirty-rate", defaults.dirty_rate),
    )


def check_unique_ids(configs: list[VfioSimConfig]) -> None:
    """:raise ValueError: ``Duplicate ID 'X' for device`` (QEMU's QemuOpts wording)."""
    seen: set[str] = set()
    for config in configs:
        if config.id in seen:
            raise ValueError(f"Duplicate ID '{config.id}' for device")
        seen.add(config.id)


def _content(device_id: str, seed: int, what: bytes, offset: int, length: int) -> bytes:
    """Deterministic pseudo-random bytes ``[offset, offset+length)`` of a named content."""
    key = hashlib.blake2b(
        device_id.encode() + b"\0" + what + str(seed).encode(), digest_size=8
    ).digest()
    first = offset // 8
    last = -(-(offset + length) // 8)
    words = np.arange(first, last, dtype=np.uint64) ^ np.uint64(int.from_bytes(key, "little"))
    words *= np.uint64(0x9E3779B97F4A7C15)
    words ^= words >> np.uint64(29)
    words *= np.uint64(0xBF58476D1CE4E5B9)
    words ^= words >> np.uint64(32)
    raw = words.astype("<u8", copy=False).tobytes()
    skip = offset - first * 8
    return raw[skip : skip + length]


def _digest(device_id: str, initial_sha: bytes, initial_len: int, state: bytes | bytearray) -> str:
    h = hashlib.sha256(b"qmp-server-vfio-sim-v1\0" + device_id.encode() + b"\0")
    h.update(struct.pack("<Q", initial_len) + initial_sha)
    h.update(struct.pack("<Q", len(state)))
    h.update(state)
    return h.hexdigest()


class VfioSimDevice:
    """The source side of a ``vfio-sim`` device (see the module docstring).

    :param seed: content seed; the destination must not need it (it rebuilds from chunks).
    """

    def __init__(self, config: VfioSimConfig, seed: int = 0, *, now: float = 0.0) -> None:
        self.config = config
        self.id = config.id
        self.seed = seed & _MASK64
        self._state = bytearray(_content(self.id, self.seed, b"state", 0, config.state_bytes))
        self._nblocks = -(-config.state_bytes // BLOCK_SIZE)
        self._dirty = np.zeros(self._nblocks, dtype=np.uint8)
        self._rng = np.random.Generator(np.random.PCG64(self.seed ^ 0x5EED))
        self._initial_sha: bytes | None = None
        self._last = now
        self._debt = 0.0
        self.running = True
        self.switchover_ack = False
        self.init_offset = config.initial_bytes  # nothing to send until save_setup
        self.initial_data_sent = False
        self.bytes_sent = 0

    # ---- the running device --------------------------------------------------------------

    def advance(self, now: float) -> int:
        """Dirty state at ``dirty_rate`` up to ``now`` (only while running); blocks written."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        if not self.running or self._nblocks == 0:
            return 0
        self._debt += self.config.dirty_rate * elapsed
        count = min(int(self._debt // BLOCK_SIZE), self._nblocks)
        self._debt -= int(self._debt // BLOCK_SIZE) * BLOCK_SIZE
        for block in self._rng.integers(0, self._nblocks, size=count).tolist():
            start = block * BLOCK_SIZE
            end = min(start + BLOCK_SIZE, self.config.state_bytes)
            self._state[start:end] = self._rng.bytes(end - start)
            self._dirty[block] = 1
        return count

    def set_running(self, running: bool, now: float) -> None:
        self.advance(now)
        self.running = running

    # ---- save (source) -------------------------------------------------------------------

    def save_setup(self, *, switchover_ack: bool) -> None:
        """Start a migration: all initial data pending, every state block dirty."""
        self.switchover_ack = switchover_ack
        self.init_offset = 0
        self.initial_data_sent = False
        self.bytes_sent = 0
        self._dirty.fill(1)

    @property
    def initial_remaining(self) -> int:
        return self.config.initial_bytes - self.init_offset

    def dirty_bytes(self) -> int:
        return int(np.count_nonzero(self._dirty)) * BLOCK_SIZE if self._nblocks else 0

    def pending_bytes(self) -> int:
        """The precopy pending estimate: initial data not sent + dirty state."""
        return self.initial_remaining + min(self.dirty_bytes(), self.config.state_bytes)

    def _initial_chunks(self, budget: int, kind: DeviceChunkKind) -> list[DeviceChunk]:
        chunks: list[DeviceChunk] = []
        while self.initial_remaining > 0 and budget > 0:
            n = min(MAX_CHUNK, self.initial_remaining, budget)
            data = _content(self.id, self.seed, b"initial", self.init_offset, n)
            chunks.append(
                DeviceChunk(self.id, kind, self.init_offset, data, kind == DeviceChunkKind.FINAL)
            )
            self.init_offset += n
            budget -= n
            self.bytes_sent += n
        return chunks

    def _state_chunks(self, budget: int | None, kind: DeviceChunkKind) -> list[DeviceChunk]:
        chunks: list[DeviceChunk] = []
        blocks = np.flatnonzero(self._dirty).tolist()
        per_chunk = MAX_CHUNK // BLOCK_SIZE
        i = 0
        while i < len(blocks) and (budget is None or budget > 0):
            # A chunk is a run of consecutive dirty blocks (at most MAX_CHUNK bytes).
            j = i + 1
            while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and j - i < per_chunk:
                j += 1
            start = blocks[i] * BLOCK_SIZE
            end = min(blocks[j - 1] * BLOCK_SIZE + BLOCK_SIZE, self.config.state_bytes)
            chunks.append(DeviceChunk(self.id, kind, start, bytes(self._state[start:end])))
            self._dirty[blocks[i] : blocks[j - 1] + 1] = 0
            self.bytes_sent += end - start
            if budget is not None:
                budget -= end - start
            i = j
        return chunks

    def save_iterate(self, max_bytes: int) -> list[DeviceChunk]:
        """One precopy round: up to about ``max_bytes`` of data (a chunk may overshoot)."""
        chunks = self._initial_chunks(max_bytes, DeviceChunkKind.INITIAL)
        budget = max_bytes - sum(len(c.data) for c in chunks)
        if self.initial_remaining == 0 and self.switchover_ack and not self.initial_data_sent:
            chunks.append(DeviceChunk(self.id, DeviceChunkKind.INIT_DATA_SENT))
            self.initial_data_sent = True
        if self.initial_remaining == 0 and budget > 0:
            chunks.extend(self._state_chunks(budget, DeviceChunkKind.DIRTY))
        return chunks

    def save_complete(self) -> list[DeviceChunk]:
        """Stop-and-copy: everything still pending, then ``END``."""
        chunks = self._initial_chunks(self.initial_remaining, DeviceChunkKind.FINAL)
        chunks.extend(self._state_chunks(None, DeviceChunkKind.FINAL))
        chunks.append(DeviceChunk(self.id, DeviceChunkKind.END))
        return chunks

    # ---- digest --------------------------------------------------------------------------

    def _initial_digest(self) -> bytes:
        if self._initial_sha is None:
            h = hashlib.sha256()
            for offset in range(0, self.config.initial_bytes, MAX_CHUNK):
                n = min(MAX_CHUNK, self.config.initial_bytes - offset)
                h.update(_content(self.id, self.seed, b"initial", offset, n))
            self._initial_sha = h.digest()
        return self._initial_sha

    def digest(self) -> str:
        """The v1 device digest (module docstring); the initial-data hash is cached."""
        return _digest(self.id, self._initial_digest(), self.config.initial_bytes, self._state)


class SwitchoverAckGate:
    """The destination's pending-ACK counter (QEMU's ``switchover_ack_pending_num``).

    ``register`` each device that needs the ACK at load start; :meth:`open_return_path`
    and :meth:`approve` return True exactly when the ACK must be sent now.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.pending = 0
        self.return_path_open = False
        self.ack_sent = False

    def register(self) -> None:
        if self.enabled:
            self.pending += 1

    def open_return_path(self) -> bool:
        """The return path is open: send the ACK at once when no device needs it."""
        self.return_path_open = True
        return self._maybe_send()

    def approve(self) -> bool:
        """A device approves.

        :raise DeviceLoadError: when no approval is pending (QEMU returns -EINVAL there).
        """
        if not self.enabled or self.pending == 0:
            raise DeviceLoadError("switchover approval with no pending switchover-ack")
        self.pending -= 1
        return self._maybe_send()

    def _maybe_send(self) -> bool:
        if self.enabled and self.return_path_open and self.pending == 0 and not self.ack_sent:
            self.ack_sent = True
            return True
        return False


class VfioSimLoader:
    """The destination side of one ``vfio-sim`` device.

    :param config: the destination's own ``-device`` properties (``load_ms``, sizes).
    :param gate: the destination's ACK gate; the loader registers itself when the gate is on.
    """

    def __init__(self, config: VfioSimConfig, gate: SwitchoverAckGate) -> None:
        self.config = config
        self.id = config.id
        self.gate = gate
        self.switchover_ack = gate.enabled
        if gate.enabled:
            gate.register()
        self._initial_hash = hashlib.sha256()
        self.initial_received = 0
        self._state = bytearray(config.state_bytes)
        self.initial_complete = False
        self.loaded_at: float | None = None
        self.load_done = False
        self.approved = False
        self.ended = False
        self.bytes_received = 0

    def _initial(self, chunk: DeviceChunk) -> None:
        if chunk.offset != self.initial_received:
            raise DeviceLoadError(
                f"{self.id}: initial data at offset {chunk.offset}, "
                f"expected {self.initial_received}"
            )
        if self.initial_received + len(chunk.data) > self.config.initial_bytes:
            raise DeviceLoadError(
                f"{self.id}: more initial data than the {self.config.initial_bytes} bytes "
                "configured"
            )
        self._initial_hash.update(chunk.data)
        self.initial_received += len(chunk.data)

    def _start_load(self, now: float) -> None:
        if self.initial_received != self.config.initial_bytes:
            raise DeviceLoadError(
                f"{self.id}: initial data incomplete ({self.initial_received} of "
                f"{self.config.initial_bytes} bytes)"
            )
        self.initial_complete = True
        self.loaded_at = now + self.config.load_ms / 1000

    def receive(self, chunk: DeviceChunk, now: float) -> bool:
        """Apply one chunk; return True when the switchover ACK must be sent now.

        :raise DeviceLoadError: on a chunk out of order, out of range, or an
            ``INIT_DATA_SENT`` without switchover-ack (QEMU: ``ID: Received INIT_DATA_SENT
            but switchover ack is not used``).
        """
        if self.ended:
            raise DeviceLoadError(f"{self.id}: data after the end of the device state")
        self.bytes_received += len(chunk.data)
        kind = chunk.kind
        if kind == DeviceChunkKind.INITIAL or (kind == DeviceChunkKind.FINAL and chunk.initial):
            if self.initial_complete:
                raise DeviceLoadError(f"{self.id}: initial data after INIT_DATA_SENT")
            self._initial(chunk)
        elif kind == DeviceChunkKind.INIT_DATA_SENT:
            if not self.switchover_ack:
                raise DeviceLoadError(
                    f"{self.id}: Received INIT_DATA_SENT but switchover ack is not used"
                )
            if self.initial_complete:
                raise DeviceLoadError(f"{self.id}: INIT_DATA_SENT received twice")
            self._start_load(now)
        elif kind in (DeviceChunkKind.DIRTY, DeviceChunkKind.FINAL):
            end = chunk.offset + len(chunk.data)
            if end > self.config.state_bytes:
                raise DeviceLoadError(
                    f"{self.id}: state bytes [{chunk.offset}, {end}) beyond the "
                    f"{self.config.state_bytes}-byte device state"
                )
            self._state[chunk.offset : end] = chunk.data
        else:  # END
            self.ended = True
            if not self.initial_complete:
                # Without switchover-ack the resource allocation happens now, in downtime.
                self._start_load(now)
        return self.poll(now)

    def next_deadline(self) -> float | None:
        """When the load work completes, while it is started and not yet seen complete."""
        return None if self.loaded_at is None or self.load_done else self.loaded_at

    def poll(self, now: float) -> bool:
        """Advance to ``now``; return True when the switchover ACK must be sent now."""
        if self.loaded_at is None or self.load_done or now < self.loaded_at:
            return False
        self.load_done = True
        if self.switchover_ack and not self.approved:
            self.approved = True
            return self.gate.approve()
        return False

    def ready(self, now: float) -> bool:
        """Whether the device can run: its state ended and the load work is done."""
        return self.ended and self.loaded_at is not None and now >= self.loaded_at

    def digest(self) -> str:
        """The v1 device digest over what was received."""
        return _digest(
            self.id, self._initial_hash.copy().digest(), self.initial_received, bytes(self._state)
        )
