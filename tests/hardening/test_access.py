"""Who may do what: a QMP TCP socket bound beyond loopback is announced on stderr.

The other access promises are proven elsewhere (``docs/reliability.md``): unix sockets 0600
(``tests/runtime/test_real_clients.py::test_unix_socket_is_private``), REST mutations only with
the token (``tests/rest/test_rest_mirror.py::test_token_wrong_missing_and_right``), ``exec:``
and ``file:`` refused over REST (``::test_exec_and_file_uris_are_refused``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from _figures import record
from server_process import ServerProcess, free_port

from qmp_server.runtime import monitor as monitor_mod
from qmp_server.runtime.monitor import ChardevSpec, QMPMonitor, exposure_warning

WARNING = "is reachable from other hosts; QMP has no authentication"


@pytest.mark.parametrize(
    ("sockname", "exposed"),
    [
        (("127.0.0.1", 4444), False),
        (("127.8.9.10", 4444), False),
        (("::1", 4444, 0, 0), False),
        (("0.0.0.0", 4444), True),
        (("::", 4444, 0, 0), True),
        (("192.168.1.20", 4444), True),
        (("fe80::1%eth0", 4444, 0, 2), True),
    ],
)
def test_exposure_warning_text(sockname: tuple[Any, ...], exposed: bool) -> None:
    text = exposure_warning(sockname, "", 4444)
    assert (text is not None) == exposed
    if text is not None:
        assert text.startswith("QMP monitor on ") and text.endswith(WARNING)


def test_loopback_tcp_monitor_gives_no_warning(qmp_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    server = qmp_server("-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off")
    _, err = server.stop()
    assert WARNING.encode() not in err


async def test_a_monitor_bound_beyond_loopback_warns_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Binding 0.0.0.0 in a test would expose the port: bind loopback and have the check see
    # the socket as if it were a wildcard address (the decision itself is tested above).
    real = exposure_warning

    def as_wildcard(name: tuple[Any, ...], host: str, port: int) -> str | None:
        return real(("0.0.0.0", name[1]), host, port)

    monkeypatch.setattr(monitor_mod, "exposure_warning", as_wildcard)
    mon = QMPMonitor(ChardevSpec("tcp", host="127.0.0.1", port=0), None,  # type: ignore[arg-type]
                     dict, lambda: None)  # fmt: skip
    await mon.start()
    try:
        err = capsys.readouterr().err
        port = mon.address[1]
        assert f"qmp-server: warning: QMP monitor on 127.0.0.1:{port} {WARNING}\n" in err
    finally:
        await mon.close()
        await asyncio.sleep(0)
    record("test_access::tcp_exposure_warning", addresses_checked=7)
