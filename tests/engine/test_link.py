"""The host link model's arithmetic (engine/link.py): parsing, pacing, fair shares, latency."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmp_server.engine.link import (
    MAX_QUANTUM,
    MIN_QUANTUM,
    LinkDirection,
    LinkModel,
    link_model,
    parse_latency,
    quantum_for,
    queue_bytes,
)


def drain(
    d: LinkDirection, step: float = 0.001, until: float = 1e6
) -> list[tuple[int, int, float]]:
    """Run the direction's clock forward as the pump would: (conn, bytes, due) in send order."""
    now = 0.0
    out = []
    while True:
        out += [(g.conn, g.nbytes, g.due) for g in d.grants(now)]
        deadline = d.next_deadline(now)
        if deadline is None or now > until:
            return out
        now = deadline if deadline > now else now + step


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2ms", 0.002), ("0.5ms", 0.0005), ("1s", 1.0), ("150us", 0.00015), (" 3ms ", 0.003),
     (".5s", 0.5), ("0ms", 0.0)],
)  # fmt: skip
def test_latency_units(text: str, seconds: float) -> None:
    assert parse_latency(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2", "ms", "-1ms", "2 ms", "2msec", "1e3us", ""])
def test_latency_needs_a_number_and_a_unit(text: str) -> None:
    with pytest.raises(ValueError, match="is not a latency"):
        parse_latency(text)


def test_link_model_from_the_options() -> None:
    assert link_model(None, None) is None
    assert link_model("125M", None) == LinkModel(125 << 20, 0.0)
    assert link_model(None, "0.5ms") == LinkModel(None, 0.0005)
    with pytest.raises(ValueError, match=r"^--link-bandwidth 12x: Parameter 'link-bandwidth'"):
        link_model("12x", None)
    with pytest.raises(ValueError, match=r"^--link-bandwidth 0: must be more than 0"):
        link_model("0", None)
    with pytest.raises(ValueError, match=r"^--link-latency fast: 'fast' is not a latency"):
        link_model("1G", "fast")


def test_quantum_and_queue_scale_with_the_bandwidth() -> None:
    assert quantum_for(None) == MAX_QUANTUM
    assert quantum_for(1000) == MIN_QUANTUM
    assert quantum_for(10 << 20) == int((10 << 20) * 0.002)
    assert queue_bytes(LinkModel(None, 0.1)) is None
    assert queue_bytes(LinkModel(1 << 30, 0.0)) == int((1 << 30) * 0.01)
    # a longer link holds more in flight: the queue grows with the round trip
    assert queue_bytes(LinkModel(1 << 30, 0.002)) > queue_bytes(LinkModel(1 << 30, 0.0))  # type: ignore[operator]


def test_one_connection_is_paced_at_the_bandwidth() -> None:
    d = LinkDirection(1000, quantum=100, horizon=0.0)
    d.offer(1, 1000)
    sent = drain(d)
    assert [n for _, n, _ in sent] == [100] * 10
    assert [round(due, 6) for _, _, due in sent] == [round(0.1 * i, 6) for i in range(1, 11)]
    assert d.bytes_total == 1000 and not d.busy()


def test_busy_connections_share_byte_for_byte() -> None:
    d = LinkDirection(1000, quantum=100, horizon=0.0)
    d.offer(1, 1000)
    d.offer(2, 1000)
    sent = drain(d)
    assert [c for c, _, _ in sent[:6]] == [1, 2, 1, 2, 1, 2]
    done = {c: max(due for cc, _, due in sent if cc == c) for c in (1, 2)}
    # both finish together, after the two streams' bytes over the bandwidth
    assert done[1] == pytest.approx(1.9) and done[2] == pytest.approx(2.0)


def test_a_small_connection_leaves_the_rest_to_the_others() -> None:
    d = LinkDirection(1000, quantum=100, horizon=0.0)
    d.offer(1, 2000)
    d.offer(2, 100)  # a return-path message, say
    sent = drain(d)
    assert [c for c, _, _ in sent[:3]] == [1, 2, 1]
    assert max(due for _, _, due in sent) == pytest.approx(2.1)


def test_latency_is_added_once_and_an_idle_link_keeps_no_credit() -> None:
    d = LinkDirection(1000, 0.05, quantum=100, horizon=0.0)
    d.offer(1, 100)
    (g,) = d.grants(0.0)
    assert g.due == pytest.approx(0.15)
    d.offer(1, 100)  # after a long pause: still one quantum per 0.1 s
    (g,) = d.grants(10.0)
    assert g.due == pytest.approx(10.15)
    assert d.next_deadline(10.0) is None


def test_grants_are_made_a_horizon_ahead() -> None:
    d = LinkDirection(1000, quantum=1, horizon=0.005)
    d.offer(1, 100)
    # 1 ms each: those that start within the 5 ms horizon (at 0, 1, ... 5 ms)
    assert len(d.grants(0.0)) == 6
    assert d.next_deadline(0.0) == pytest.approx(0.001)  # when the next one may start
    assert d.next_deadline(0.002) == pytest.approx(0.002)


def test_an_unlimited_link_only_delays() -> None:
    d = LinkDirection(None, 0.002)
    d.offer(1, 10 << 20)
    d.offer(2, 5)
    assert [(g.conn, g.nbytes, g.due) for g in d.grants(1.0)] == [
        (1, 10 << 20, 1.002), (2, 5, 1.002),
    ]  # fmt: skip
    assert d.next_deadline(1.0) is None


def test_a_forgotten_connection_loses_its_turn() -> None:
    d = LinkDirection(1000, quantum=100, horizon=0.0)
    d.offer(1, 500)
    d.offer(2, 500)
    d.forget(1)
    assert d.waiting(1) == 0 and d.waiting(2) == 500
    assert {c for c, _, _ in drain(d)} == {2}
    d.forget(3)  # unknown: nothing happens


@given(
    offers=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 5000)), min_size=1, max_size=20),
    rate=st.integers(100, 100_000),
    latency=st.floats(0, 0.1),
)
def test_every_byte_crosses_once_no_faster_than_the_bandwidth(
    offers: list[tuple[int, int]], rate: int, latency: float
) -> None:
    d = LinkDirection(rate, latency, quantum=512)
    for conn, n in offers:
        d.offer(conn, n)
    sent = drain(d, step=0.0005)
    total = sum(n for _, n in offers)
    for conn in {c for c, _ in offers}:
        assert sum(n for c, n, _ in sent if c == conn) == sum(n for c, n in offers if c == conn)
    dues = [due for _, _, due in sent]
    assert dues == sorted(dues)  # one chunk at a time: they arrive in the order they left
    assert dues[-1] >= total / rate + latency - 1e-9
    assert dues[-1] <= total / rate + latency + 0.001 * len(sent) + 1e-9  # no idle gaps
    assert d.bytes_total == total
