"""``qmp-migrate``'s postcopy decisions: when to switch, and how postcopy progress reads.

Why a module of its own: the driver (:mod:`qmp_server.migrate_cli`) moves QMP messages; what
counts as "precopy does not converge", which statuses belong to postcopy and how its counters
are shown are decisions worth testing without two servers.  Pure: no I/O, no clock.

The switch rules, as ``virsh migrate`` applies them:

* ``--postcopy`` alone: ``migrate-start-postcopy`` as soon as the source reports ``active``
  (virsh itself waits for a ``virsh migrate-postcopy``; a one-shot tool has no second command,
  so it switches at once).
* ``--postcopy --postcopy-after-precopy``: the switch waits until the first full pass over RAM
  is over without the migration having completed, i.e. when the source announces pass 2
  (``MIGRATION_PASS`` ``{"pass": 2}``, which libvirt turns into its migration-iteration event
  and virsh answers with the switch) or, when events are lost, when ``query-migrate`` shows
  ``ram.dirty-sync-count`` >= 2.
* ``--timeout S --timeout-postcopy``: the timeout switches to postcopy instead of cancelling
  (and ``--postcopy`` then no longer switches at once, as with virsh).

>>> switch = PostcopySwitch(after_precopy=True)
>>> switch.due("active", 1) is None, switch.due("active", 2)
(True, 'pass 2: the first full pass did not converge')
>>> PostcopySwitch(after_precopy=False).due("active", 1)
'precopy started'
>>> postcopy_detail({"status": "postcopy-active", "ram": {"postcopy-bytes": 3 << 20,
...                  "postcopy-requests": 3}})
', postcopy sent 3 MiB, 3 page requests'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qmp_server.engine.sizes import format_size

__all__ = [
    "POSTCOPY_STATES",
    "SWITCH_PASS",
    "PostcopySwitch",
    "blocktime_text",
    "postcopy_detail",
]

#: The pass whose start means the first full pass did not converge (virsh's iteration 2).
SWITCH_PASS = 2
#: Statuses in which the guest runs on the destination while its RAM still comes.
POSTCOPY_STATES = frozenset(
    {"postcopy-active", "postcopy-paused", "postcopy-recover-setup", "postcopy-recover"}
)


@dataclass
class PostcopySwitch:
    """When to send ``migrate-start-postcopy`` (once)."""

    after_precopy: bool
    #: ``--timeout-postcopy``: the timeout switches (the driver calls it), not ``active``
    on_timeout: bool = False
    #: why the switch was requested, once it was (shown and put in the JSON summary)
    reason: str | None = None

    def due(self, status: str, passes: int) -> str | None:
        """The reason to switch now, or None.

        :param status: the source's migration status as last seen.
        :param passes: the highest pass number seen (``MIGRATION_PASS`` or
            ``ram.dirty-sync-count``), 0 before any.
        """
        if self.reason is not None or status != "active":
            return None
        if not self.after_precopy:
            return None if self.on_timeout else "precopy started"
        if passes >= SWITCH_PASS:
            return f"pass {passes}: the first full pass did not converge"
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def postcopy_detail(info: dict[str, Any]) -> str:
    """``, postcopy sent X, N page requests`` once postcopy has begun, else ``""``."""
    ram = info.get("ram") or {}
    sent = _int(ram.get("postcopy-bytes"))
    requests = _int(ram.get("postcopy-requests"))
    if info.get("status") not in POSTCOPY_STATES and not sent:
        return ""
    text = ""
    if sent is not None:
        text += f", postcopy sent {format_size(sent)}"
    if requests is not None:
        text += f", {requests} page request{'' if requests == 1 else 's'}"
    return text


def blocktime_text(dest_info: dict[str, Any]) -> str | None:
    """The destination's blocktime (``postcopy-blocktime`` capability), or None without it.

    >>> blocktime_text({"status": "completed", "postcopy-blocktime": 12,
    ...                 "postcopy-vcpu-blocktime": [12, 0]})
    '12 ms (per vCPU: 12, 0 ms)'
    """
    total = _int(dest_info.get("postcopy-blocktime"))
    if total is None:
        return None
    per = dest_info.get("postcopy-vcpu-blocktime")
    if isinstance(per, list) and per:
        return f"{total} ms (per vCPU: {', '.join(str(v) for v in per)} ms)"
    return f"{total} ms"
