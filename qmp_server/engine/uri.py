"""Migration URIs and channels: which transports an emulated QEMU knows, and how a
``channels`` argument maps onto the URI the migration driver runs.

QEMU 7.2 accepts ``tcp:``, ``unix:``, ``exec:``, ``fd:``, ``vsock:`` (and ``rdma:`` on RDMA
builds, which this host's QEMU answered as unknown); ``file:`` arrived in 8.2, and so did the
``channels`` argument of ``migrate`` / ``migrate-incoming`` (a list of ``MigrationChannel``,
each a ``channel-type`` and a ``MigrationAddress``).

QEMU turns a URI into a channel; qmp-server goes the other way: a channel's address becomes the
equivalent URI (:func:`channel_uri`), so both spellings run through one code path.  The checks
and texts below are the ones a live QEMU 10.0 gave (``tests/conformance/fixtures/qemu-10.0/
migration-channels.json``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from qmp_server.errors import CommandError
from qmp_server.profiles import Profile

__all__ = ["NEED_URI_OR_CHANNELS", "channel_uri", "select_uri", "uri_scheme_known"]

_SCHEMES_7_2 = ("tcp:", "unix:", "exec:", "fd:", "vsock:")

NEED_URI_OR_CHANNELS = "need either 'uri' or 'channels' argument"


def uri_scheme_known(profile: Profile, uri: str) -> bool:
    """True when the emulated QEMU recognises the URI's transport."""
    schemes = _SCHEMES_7_2 + (("file:",) if profile.since(8, 2) else ())
    return uri.startswith(schemes)


def _main_channel(channels: Sequence[Mapping[str, Any]], *, incoming: bool) -> Mapping[str, Any]:
    """The ``main`` channel of a (validated, non-empty) channel list."""
    if incoming:
        # migrate-incoming takes exactly one channel, and uses it whatever its type says
        # (QEMU 10.0 listens on a lone "cpr" channel as on a main one).
        if len(channels) > 1:
            raise CommandError("Channel list must have only one entry, for type 'main'")
        return channels[0]
    main: Mapping[str, Any] | None = None
    seen_cpr = False
    for channel in channels:
        if channel["channel-type"] == "main":
            if main is not None:
                raise CommandError("Channel list has more than one main entry")
            main = channel
        else:
            if seen_cpr:
                raise CommandError("Channel list has more than one cpr entry")
            seen_cpr = True
    if main is None:
        # QEMU 10.0 crashes (SIGSEGV) on a list without a main channel; qmp-server refuses it.
        raise CommandError("Channel list has no main entry")
    # A cpr channel matters only in migration mode cpr-transfer, which qmp-server does not
    # model; with mode normal QEMU ignores it.
    return main


def _host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def channel_uri(addr: Mapping[str, Any]) -> str:
    """The URI equivalent to a validated ``MigrationAddress``.

    :raise CommandError: for the transports qmp-server does not model (vsock, rdma).
    """
    transport = addr["transport"]
    if transport == "socket":
        kind = addr["type"]
        if kind == "inet":
            return "tcp:" + _host_port(str(addr["host"]), str(addr["port"]))
        if kind == "unix":
            return f"unix:{addr['path']}"
        if kind == "fd":
            return f"fd:{addr['str']}"
        raise CommandError("qmp-server does not model vsock migration")
    if transport == "exec":
        # QEMU runs the argument vector itself; the exec: URI form runs it through /bin/sh.
        return "exec:" + shlex.join(str(a) for a in addr["args"])
    if transport == "file":
        offset = int(addr["offset"])
        return f"file:{addr['filename']}" + (f",offset={offset}" if offset else "")
    raise CommandError("qmp-server does not model RDMA migration")


def select_uri(args: Mapping[str, Any], *, incoming: bool) -> str:
    """The URI a ``migrate`` / ``migrate-incoming`` call names, by ``uri`` or ``channels``.

    Exactly one of the two must be given; an empty ``channels`` list counts as absent (QEMU
    receives it as a NULL list), so ``uri`` plus ``channels: []`` is a plain ``uri`` call.

    :raise CommandError: with QEMU 10.0's text.
    """
    uri = args.get("uri")
    channels = args.get("channels") or None
    if (uri is None) == (channels is None):
        raise CommandError(NEED_URI_OR_CHANNELS)
    if uri is not None:
        return str(uri)
    assert channels is not None
    return channel_uri(_main_channel(channels, incoming=incoming)["addr"])
