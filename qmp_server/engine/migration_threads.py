"""What ``query-migrationthreads`` lists: the source's migration threads, named per version.

Facts (``docs/multifd-facts.md``, "query-migrationthreads"): only the *source* lists threads,
its main migration thread and one sender per multifd channel, from the moment each starts
until it ends (nothing before a migration, nothing once it completed, failed or was
cancelled); the destination lists none, even with its receive threads running. QEMU puts a
thread at the head of its list when it registers, so the newest comes first: the senders,
then the main thread, which registers before them. QEMU 10.0 names them ``mig/src/main`` and
``mig/src/send_N`` (recorded live); 8.1 used ``live_migration`` and ``multifdsend_N`` (QEMU's
source history: the senders were renamed in 9.1, the main thread's listed name in 9.2; not
recorded live, there is no 8.1 here).
The ids are chosen by the runtime (``runtime/migration_threads.py``); this module only names
and orders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qmp_server.profiles import Profile


def main_thread_name(profile: Profile) -> str:
    """The source's main migration thread as this version's query lists it."""
    return "mig/src/main" if profile.since(9, 2) else "live_migration"


def sender_thread_name(profile: Profile, channel: int) -> str:
    """The sender thread of multifd channel ``channel``."""
    return f"mig/src/send_{channel}" if profile.since(9, 1) else f"multifdsend_{channel}"


def thread_list(
    profile: Profile, main: int | None, senders: Sequence[int | None]
) -> list[dict[str, Any]]:
    """``query-migrationthreads``' answer: newest first, i.e. the senders from the last
    channel down, then the main thread (a thread id of None is a thread not running)."""
    out = [
        {"name": sender_thread_name(profile, i), "thread-id": tid}
        for i, tid in reversed(list(enumerate(senders)))
        if tid is not None
    ]
    if main is not None:
        out.append({"name": main_thread_name(profile), "thread-id": main})
    return out
