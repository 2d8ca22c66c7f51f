"""-smp parsing and vCPU placement (compared with live QEMU in the domain-start conformance
group; here the rules themselves)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmp_server.engine.topology import Topology, parse_smp


def test_default_is_one_vcpu() -> None:
    assert parse_smp(None) == Topology(1, 1, 1, 1, 1, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,sockets=1,cores=1,threads=1", Topology(1, 1, 1, 1, 1, 1)),
        ("4", Topology(4, 1, 1, 4, 1, 4)),  # cores take the rest (QEMU 6.2+ machines)
        ("cpus=2,maxcpus=8", Topology(2, 1, 1, 8, 1, 8)),
        ("3,sockets=2,cores=2,threads=1,maxcpus=4", Topology(3, 2, 1, 2, 1, 4)),
        ("4,sockets=1,dies=2,cores=1,threads=2", Topology(4, 1, 2, 1, 2, 4)),
        ("sockets=2,cores=3,threads=2", Topology(12, 2, 1, 3, 2, 12)),
    ],
)
def test_topologies(text: str, expected: Topology) -> None:
    assert parse_smp(text) == expected


@pytest.mark.parametrize("text", ["2,sockets=2,cores=2,maxcpus=3", "8,maxcpus=4", "x", "2,bogus=1"])
def test_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_smp(text)


def test_ids_and_apic_ids_as_qemu_places_them() -> None:
    # recorded from QEMU 7.2: -smp 4,sockets=1,dies=2,cores=1,threads=2
    topo = parse_smp("4,sockets=1,dies=2,cores=1,threads=2")
    assert [topo.apic_id(i) for i in range(4)] == [0, 1, 2, 3]
    assert topo.ids(2) == {"socket-id": 0, "die-id": 1, "core-id": 0, "thread-id": 0}
    # -smp 3,sockets=2,cores=2,threads=1,maxcpus=4: vCPU 2 is socket 1, APIC id 2
    topo = parse_smp("3,sockets=2,cores=2,threads=1,maxcpus=4")
    assert topo.apic_id(2) == 2 and topo.ids(2)["socket-id"] == 1


@given(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 3)
)
def test_every_vcpu_has_its_own_place(sockets: int, dies: int, cores: int, threads: int) -> None:
    topo = parse_smp(f"sockets={sockets},dies={dies},cores={cores},threads={threads}")
    places = {tuple(topo.ids(i).values()) for i in range(topo.maxcpus)}
    apics = {topo.apic_id(i) for i in range(topo.maxcpus)}
    assert len(places) == len(apics) == topo.maxcpus == sockets * dies * cores * threads


@given(st.text(max_size=40))
def test_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_smp(text)
