"""Migration URIs: which schemes an emulated QEMU knows, and their parsed addresses.

QEMU 7.2 accepts ``tcp:``, ``unix:``, ``exec:``, ``fd:``, ``vsock:`` (and ``rdma:`` on RDMA
builds, which this host's QEMU answered as unknown); ``file:`` arrived in 8.2.
"""

from __future__ import annotations

from qmp_server.profiles import Profile

__all__ = ["uri_scheme_known"]

_SCHEMES_7_2 = ("tcp:", "unix:", "exec:", "fd:", "vsock:")


def uri_scheme_known(profile: Profile, uri: str) -> bool:
    """True when the emulated QEMU recognises the URI's transport."""
    schemes = _SCHEMES_7_2 + (("file:",) if profile.since(8, 2) else ())
    return uri.startswith(schemes)
