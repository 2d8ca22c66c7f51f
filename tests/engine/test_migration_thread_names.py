"""The names and order of ``query-migrationthreads`` per profile (the pure part; the ids and
the live comparison: tests/runtime/test_migration_threads.py)."""

from __future__ import annotations

from qmp_server.engine.migration_threads import thread_list
from qmp_server.profiles import PROFILES


def test_10_0_newest_first() -> None:
    assert thread_list(PROFILES["10.0"], 10, [11, 12]) == [
        {"name": "mig/src/send_1", "thread-id": 12},
        {"name": "mig/src/send_0", "thread-id": 11},
        {"name": "mig/src/main", "thread-id": 10},
    ]


def test_8_1_names() -> None:
    names = [t["name"] for t in thread_list(PROFILES["8.1"], 10, [11, 12, 13])]
    assert names == ["multifdsend_2", "multifdsend_1", "multifdsend_0", "live_migration"]


def test_threads_not_running_are_left_out() -> None:
    assert thread_list(PROFILES["10.0"], None, [None, 7]) == [
        {"name": "mig/src/send_1", "thread-id": 7}
    ]
    assert thread_list(PROFILES["10.0"], None, []) == []
