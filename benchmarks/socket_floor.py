"""The floor under every migration benchmark here: move N GiB over N loopback TCP
connections with nothing else done (no page to build, none to compare, no protocol), one
sending thread per connection in this process and one receiving thread per connection in a
forked child.  No migration over this machine's loopback can beat it.

    .venv/bin/python benchmarks/socket_floor.py [--connections 2] [--size 1G] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time

CHUNK = 4 << 20


def _receive(listener: socket.socket, connections: int) -> None:
    conns = [listener.accept()[0] for _ in range(connections)]

    def drain(conn: socket.socket) -> None:
        view = memoryview(bytearray(CHUNK))
        while conn.recv_into(view):
            pass
        conn.close()

    threads = [threading.Thread(target=drain, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(connections: int, size: int) -> dict[str, float]:
    """Wall time and CPU seconds (both processes) of moving ``size`` bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the receiving side
        _receive(listener, connections)
        os._exit(0)
    listener.close()
    data = os.urandom(CHUNK)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    before, start = os.times(), time.monotonic()

    def send(sock: socket.socket) -> None:
        for _ in range(size // CHUNK // connections):
            sock.sendall(data)
        sock.close()

    threads = [threading.Thread(target=send, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.waitpid(pid, 0)
    wall, after = time.monotonic() - start, os.times()
    cpu = sum(after[:4]) - sum(before[:4])
    return {"connections": connections, "ms": round(wall * 1000), "cpu-s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1]]
    result = measure(args.connections, size)
    print(json.dumps(result) if args.json else
          f"{args.size} over {args.connections} connection(s): {result['ms']} ms, "
          f"{result['cpu-s']} CPU-s")  # fmt: skip


if __name__ == "__main__":
    main()
