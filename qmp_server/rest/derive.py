"""Fields a dashboard needs and QEMU does not give, derived from one ``query-migrate`` answer.

Pure: no I/O, no clock.  Input: the ``query-migrate`` return value, verbatim, and the
switchover-ACK state the engine exposes (``vm.switchover_ack_state``: ``"not-needed"``,
``"pending"``, ``"received"``, or None when unknown).  Output: :func:`derive_migration`.

Formulas (also in ``docs/rest-api.md``):

* **progress %** = ``100 * (ram.total - ram.remaining) / ram.total``, clamped to [0, 100];
  ``100`` once the status is ``completed``; ``0`` in ``setup`` (no RAM counters yet); None when
  there is nothing to measure (``none``, ``failed``, ``cancelled``, no ``ram`` object).
  ``ram.transferred / ram.total`` is *not* used: pages are resent, so it exceeds 100 %.
  The value can go down between passes when the guest dirties memory faster than it is sent.
* **transfer rate** (bytes/s) = ``ram.mbps * 1e6 / 8`` (QEMU's ``mbps`` is 10⁶ bits/s).
* **dirty rate** (bytes/s) = ``ram.dirty-pages-rate * ram.page-size`` (page size 4096 when
  absent), as libvirt computes it.
* **ETA** (seconds) = ``ram.remaining / (transfer rate - dirty rate)`` while the migration is
  active and that net drain rate is positive; None otherwise (not converging, or no rate yet).
  The ETA excludes the downtime (stop-and-copy) phase.

The switchover ACK is reported as its own field (never as a status):
``"not-needed" | "pending" | "received" | "unknown"``.

Postcopy: ``postcopy`` is true in the statuses where the guest runs on the destination while
its RAM still comes (``postcopy-active``, ``-paused``, ``-recover-setup``, ``-recover``), and
once ``ram.postcopy-bytes`` is non-zero (a completed postcopy migration).  The counters are
QEMU's, passed through: ``ram.postcopy-bytes``, ``ram.postcopy-requests`` (the source) and
``postcopy-blocktime`` / ``postcopy-vcpu-blocktime`` (the destination, at completion, with the
``postcopy-blocktime`` capability on).

>>> info = {"status": "active", "ram": {"total": 1000, "remaining": 250, "mbps": 0.008,
...         "dirty-pages-rate": 0, "page-size": 4096, "dirty-sync-count": 2}}
>>> d = derive_migration(info, "pending")
>>> d["progress-percent"], d["transfer-rate-bytes"], d["eta-seconds"], d["switchover-ack"]
(75.0, 1000.0, 0.25, 'pending')
>>> derive_migration({}, None)["status"], derive_migration({}, None)["progress-percent"]
('none', None)
>>> d = derive_migration({"status": "completed", "postcopy-blocktime": 7,
...                       "postcopy-vcpu-blocktime": [7, 0]}, None)
>>> d["postcopy"], d["postcopy-blocktime-ms"], d["postcopy-vcpu-blocktime-ms"]
(False, 7.0, [7, 0])
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ACK_STATES",
    "ACTIVE_STATES",
    "POSTCOPY_STATES",
    "PROGRESS_FORMULA",
    "derive_migration",
]

ACK_STATES = ("not-needed", "pending", "received")
#: States in which RAM is still being sent (ETA is meaningful).
ACTIVE_STATES = frozenset({"active", "postcopy-active", "pre-switchover", "device"})
#: States in which the guest runs on the destination while its RAM still comes.
POSTCOPY_STATES = frozenset(
    {"postcopy-active", "postcopy-paused", "postcopy-recover-setup", "postcopy-recover"}
)
PROGRESS_FORMULA = "100 * (ram.total - ram.remaining) / ram.total, clamped to [0, 100]"
DEFAULT_PAGE_SIZE = 4096


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _progress(status: str, ram: dict[str, Any] | None) -> float | None:
    if status == "completed":
        return 100.0
    if ram is not None:
        total, remaining = _num(ram.get("total")), _num(ram.get("remaining"))
        if total is not None and remaining is not None and total > 0:
            return max(0.0, min(100.0, 100.0 * (total - remaining) / total))
    if status == "setup":
        return 0.0
    return None


def derive_migration(info: dict[str, Any], ack_state: str | None) -> dict[str, Any]:
    """The derived fields for one ``query-migrate`` answer (see the module docstring).

    :param info: what ``query-migrate`` returned (``{}`` when no migration ever ran).
    :param ack_state: ``vm.switchover_ack_state``; anything else than :data:`ACK_STATES`
        is reported as ``"unknown"``.
    :return: a dict with ``status``, ``progress-percent``, ``eta-seconds``,
        ``transfer-rate-bytes``, ``dirty-rate-bytes``, ``remaining-bytes``, ``total-bytes``,
        ``iteration``, ``expected-downtime-ms``, ``downtime-ms``, ``switchover-ack``,
        ``progress-formula``, ``postcopy``, ``postcopy-bytes``, ``postcopy-requests``,
        ``postcopy-blocktime-ms``, ``postcopy-vcpu-blocktime-ms``; a value is None when it
        cannot be derived.
    """
    status = info.get("status")
    status = status if isinstance(status, str) else "none"
    ram = info.get("ram") if isinstance(info.get("ram"), dict) else None
    rate = dirty = remaining = total = iteration = postcopy_bytes = requests = None
    if ram is not None:
        mbps = _num(ram.get("mbps"))
        rate = None if mbps is None else mbps * 1e6 / 8
        pages = _num(ram.get("dirty-pages-rate"))
        page_size = _num(ram.get("page-size")) or DEFAULT_PAGE_SIZE
        dirty = None if pages is None else pages * page_size
        remaining = _num(ram.get("remaining"))
        total = _num(ram.get("total"))
        sync = ram.get("dirty-sync-count")
        iteration = sync if isinstance(sync, int) and not isinstance(sync, bool) else None
        postcopy_bytes = _num(ram.get("postcopy-bytes"))
        requests = _num(ram.get("postcopy-requests"))
    per_vcpu = info.get("postcopy-vcpu-blocktime")
    eta: float | None = None
    if status in ACTIVE_STATES and remaining is not None and rate is not None:
        drain = rate - (dirty or 0.0)
        if drain > 0:
            eta = remaining / drain
    return {
        "status": status,
        "progress-percent": _progress(status, ram),
        "progress-formula": PROGRESS_FORMULA,
        "eta-seconds": eta,
        "transfer-rate-bytes": rate,
        "dirty-rate-bytes": dirty,
        "remaining-bytes": remaining,
        "total-bytes": total,
        "iteration": iteration,
        "expected-downtime-ms": _num(info.get("expected-downtime")),
        "downtime-ms": _num(info.get("downtime")),
        "switchover-ack": ack_state if ack_state in ACK_STATES else "unknown",
        "postcopy": status in POSTCOPY_STATES or bool(postcopy_bytes),
        "postcopy-bytes": postcopy_bytes,
        "postcopy-requests": requests,
        "postcopy-blocktime-ms": _num(info.get("postcopy-blocktime")),
        "postcopy-vcpu-blocktime-ms": per_vcpu if isinstance(per_vcpu, list) else None,
    }
