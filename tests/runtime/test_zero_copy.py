"""runtime/zero_copy.py against the real kernel: MSG_ZEROCOPY over TCP loopback (which the
kernel copies after all, and says so), none on a unix socket."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from qmp_server.runtime.zero_copy import ZeroCopySender, enable_zero_copy, zero_copy_supported


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def test_tcp_has_zero_copy_and_a_unix_socket_has_not() -> None:
    assert zero_copy_supported(socket.AF_INET)
    assert not zero_copy_supported(socket.AF_UNIX)
    a, b = socket.socketpair()
    with a, b, pytest.raises(OSError):
        enable_zero_copy(a)


def test_sends_arrive_whole_and_every_completion_is_waited_for() -> None:
    client, server = _tcp_pair()
    got = bytearray()

    def drain() -> None:
        while chunk := server.recv(1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    enable_zero_copy(client)
    sender = ZeroCopySender()
    blobs = [os.urandom(n) for n in (100, 4096, 1 << 20, 3 << 20)]
    for blob in blobs:
        assert sender.send(client, memoryview(blob)) == len(blob)
    sender.wait(client)
    client.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert bytes(got) == b"".join(blobs)
    assert sender.copied  # loopback: the kernel copied what it was lent
    client.close()
    server.close()
