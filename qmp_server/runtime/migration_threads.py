"""The real threads behind ``query-migrationthreads``: which thread of this process does each
piece of migration work QEMU gives a thread of its own.

A user pins what this lists (``taskset -p``, ``sched_setaffinity``), so every id must be a
live task of this process (``/proc/self/task/<id>``) that does that work:

* a multifd channel's sender is the channel's writer thread (:mod:`socket_writer`), which
  copies that channel's pages into the kernel, as QEMU's sender thread does; with
  ``mapped-ram`` on a file, one of the threads that write the pages at their places;
* the main migration thread is the main connection's writer thread: it writes the main
  stream (and, with lazily built steps, builds the pages it sends), exists only while the
  migration runs, and pinning it leaves the monitor alone, as pinning QEMU's main migration
  thread does. Only when the transport has no writer thread (``file:``, written from the
  loop's executor) is it the event loop thread, where the precopy loop then runs.

The precopy loop's bookkeeping (dirty syncs, choosing pages, the rate limit) runs on the event
loop thread, which also serves every monitor; it is not listed otherwise, as QEMU does not
list its main thread (the monitor's), so a pin meant for the migration never slows the monitor.

Which ones QEMU lists, their names and order: :mod:`qmp_server.engine.migration_threads`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from qmp_server.engine.migration_threads import thread_list

if TYPE_CHECKING:
    from qmp_server.runtime.migration_source import SourceDriver

#: source statuses with no migration thread (QEMU's thread unregisters as it ends)
_NO_THREAD = frozenset({"none", "completed", "failed", "cancelled"})


def source_threads(driver: SourceDriver) -> list[dict[str, Any]]:
    """``query-migrationthreads`` for this VM (called on the event loop thread)."""
    if driver.state.status in _NO_THREAD:
        return []
    channel = driver.channel
    main: int | None = None
    if channel is not None:
        main = channel.writer_thread_id
        if main is None and channel.file is not None:
            main = threading.get_native_id()  # the loop: file: has no writer thread
    multifd = driver.multifd
    mapped = driver.mapped
    senders = (
        multifd.writer_thread_ids() if multifd is not None
        # mapped-ram with multifd: its page writers are the channels' threads (live 10.0)
        else mapped.writer_thread_ids() if mapped is not None and mapped.channels
        else []
    )  # fmt: skip
    return thread_list(driver.ctx.profile, main, senders)
