"""Load: 16 pipelining QMP clients, a REST poller and two SSE subscribers during a migration.

Promises (``docs/reliability.md``):

- every request on every monitor is answered exactly once, in order (ids checked one by one);
- the migration completes and both sides have the same ``x-query-guest-digest``;
- both SSE subscribers see the same contiguous ids and the whole MIGRATION sequence;
- a QMP client that never reads is disconnected once 64 MiB of output is queued for it
  (``qmp_server.runtime.monitor.MAX_PENDING_OUTPUT``) and the others still complete;
- the source's VmRSS stays within a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import httpx
from _figures import record
from conftest import MiB, Rig, vm_rss_kib
from server_process import free_port

from qmp_server.runtime.monitor import MAX_PENDING_OUTPUT

CLIENTS = 16
BATCH = 64
MAX_ROUNDS = 40
#: generous: the guest is allocated before the "before" sample; the cut-off client may queue
#: up to 64 MiB (plus one chunk's replies) before it is dropped.
RSS_BOUND_KIB = 384 * 1024

REQUESTS: list[dict[str, Any]] = [
    {"execute": "query-migrate"},
    {"execute": "query-status"},
    {"execute": "query-migrate-capabilities"},
    {"execute": "query-migrate-parameters"},
    {"execute": "no-such-command"},
    {"execute": "migrate-set-parameters", "arguments": {"downtime-limit": "x"}},
]


async def _greet(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 22)
    assert b"QMP" in await reader.readline()
    writer.write(b'{"execute":"qmp_capabilities"}\r\n')
    assert json.loads(await reader.readline()) == {"return": {}}
    return reader, writer


async def _pipeliner(path: str, me: int, done: asyncio.Event) -> int:
    """Rounds of BATCH pipelined requests until the migration is done; returns requests."""
    reader, writer = await _greet(path)
    served = 0
    try:
        for rnd in range(MAX_ROUNDS):
            if done.is_set() and rnd >= 2:
                break
            ids = [f"{me}-{served + i}" for i in range(BATCH)]
            payload = b"".join(
                json.dumps({**REQUESTS[(served + i) % len(REQUESTS)], "id": ident}).encode()
                for i, ident in enumerate(ids)
            )
            writer.write(payload)
            got: list[str] = []
            while len(got) < BATCH:
                msg = json.loads(await asyncio.wait_for(reader.readline(), 30))
                if "event" in msg:
                    continue
                assert ("return" in msg) != ("error" in msg), msg
                got.append(msg["id"])
            assert got == ids  # exactly once, in order
            served += BATCH
    finally:
        writer.close()
    return served


async def _never_reads(path: str) -> tuple[int, bool]:
    """Send query-qmp-schema (18 KiB answers) without ever reading; True if cut off."""
    reader, writer = await _greet(path)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    request = b'{"execute":"query-qmp-schema"}'
    try:
        for _ in range(400):  # at most 20,000 requests: ~360 MiB of answers
            writer.write(request * 50)
            await asyncio.wait_for(writer.drain(), 30)
            sent += 50
            await asyncio.sleep(0)
    except (ConnectionError, OSError):
        return sent, True
    # still connected? reading must end (EOF/reset) before all the answers came
    total = 0
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
            total += len(chunk)
    writer.close()
    return sent, total < sent * 18000


async def _rest_poller(base: str, done: asyncio.Event) -> int:
    n = 0
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while not done.is_set() and n < 5000:
            for path in ("/api/v1/migration", "/api/v1/status", "/metrics"):
                r = await client.get(path)
                assert r.status_code == 200, (path, r.text)
                n += 1
            await asyncio.sleep(0.01)
    return n


async def _sse(base: str, ready: asyncio.Event) -> list[tuple[int, str, dict[str, Any]]]:
    """Events until MIGRATION completed/failed: (id, name, data)."""
    seen: list[tuple[int, str, dict[str, Any]]] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=60)) as client,
        client.stream("GET", "/api/v1/events") as resp,
    ):
        assert resp.status_code == 200
        name, ident = "", 0
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
                if name == "hello":
                    ready.set()
            elif line.startswith("id:"):
                ident = int(line.split(":", 1)[1])
            elif line.startswith("data:") and name != "hello":
                data = json.loads(line.split(":", 1)[1])["data"]
                seen.append((ident, name, data))
                if name == "MIGRATION" and data["status"] in ("completed", "failed"):
                    return seen
    raise AssertionError(f"SSE stream ended early: {seen}")


async def _wait_http(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("REST mirror did not come up")


async def test_load_during_migration(rig: Rig) -> None:
    hport = free_port()
    base = f"http://127.0.0.1:{hport}"
    common = ("-m", "128M", "--guest-fill", "random")
    source = await rig.side(*common, "--dirty-rate", "2M", "--http", f"127.0.0.1:{hport}",
                            monitors=CLIENTS + 2)  # fmt: skip
    dest = await rig.side(*common, "-incoming", "defer")
    await _wait_http(base)
    pid = source.server.proc.pid
    rss_before = vm_rss_kib(pid)
    paths = source.server.extra_sockets
    assert len(paths) == CLIENTS + 1
    await source.params(max_bandwidth=32 * MiB)
    uri = f"unix:{rig.sockdir}/load.sock"
    await dest.run("migrate-incoming", {"uri": uri})

    done = asyncio.Event()
    ready = [asyncio.Event(), asyncio.Event()]
    sse = [asyncio.create_task(_sse(base, r)) for r in ready]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 20)
    slow = asyncio.create_task(_never_reads(paths[CLIENTS]))
    pipes = [asyncio.create_task(_pipeliner(p, i, done)) for i, p in enumerate(paths[:CLIENTS])]
    poller = asyncio.create_task(_rest_poller(base, done))
    await source.run("migrate", {"uri": uri})
    try:
        assert await source.wait_status("completed", "failed", within=60) == "completed"
        assert await dest.wait_status("completed", "failed") == "completed"
    finally:
        done.set()
    served = await asyncio.wait_for(asyncio.gather(*pipes), 60)
    polls = await asyncio.wait_for(poller, 30)
    streams = await asyncio.wait_for(asyncio.gather(*sse), 30)
    slow_sent, cut_off = await asyncio.wait_for(slow, 120)
    rss_after = vm_rss_kib(pid)

    src_digest, dst_digest = await source.digest(), await dest.digest()
    assert src_digest == dst_digest
    assert all(n >= 2 * BATCH for n in served)
    assert cut_off, f"a client that never reads kept its connection ({slow_sent} requests)"
    assert slow_sent * 18000 > MAX_PENDING_OUTPUT
    for seen in streams:
        ids = [i for i, _, _ in seen]
        assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # contiguous, no dup
        statuses = [d["status"] for _, n, d in seen if n == "MIGRATION"]
        assert statuses[0] == "setup" and statuses[-1] == "completed", statuses
    assert [s[-1] for s in streams[0]] == [s[-1] for s in streams[1]][: len(streams[0])]
    assert rss_after - rss_before < RSS_BOUND_KIB, (rss_before, rss_after)
    # the process still answers everyone
    assert await source.status() == "postmigrate"

    ram = (await source.run("query-migrate"))["ram"]
    record("test_load::during_migration", qmp_requests_answered=sum(served),
           monitors=CLIENTS, rest_requests=polls, sse_events=sum(len(s) for s in streams),
           never_reading_requests_sent=slow_sent, migration_bytes=int(ram["total"]),
           rss_before_kib=rss_before, rss_after_kib=rss_after,
           guest_bytes_compared=128 * MiB)  # fmt: skip
