"""vfio-sim: -device parsing, the source's initial/dirty/final flow, the destination's load."""

from __future__ import annotations

import pytest

from qmp_server.engine.devices import (
    DeviceChunkKind,
    DeviceLoadError,
    SwitchoverAckGate,
    VfioSimConfig,
    VfioSimDevice,
    VfioSimLoader,
    check_unique_ids,
    parse_device,
)


def test_parse_device() -> None:
    cfg = parse_device(
        "vfio-sim,id=dev0,initial-bytes=300M,state-bytes=4k,load-ms=1480,dirty-rate=1M"
    )
    assert cfg == VfioSimConfig("dev0", 300 << 20, 4096, 1480, 1 << 20)
    assert parse_device("vfio-sim,id=d").initial_bytes == 64 << 20
    cases = {
        "e1000,id=x": "'e1000' is not a valid device model name",
        "vfio-sim,id=x,foo=1": "Property 'vfio-sim.foo' not found",
        "vfio-sim,load-ms=3": "Parameter 'id' is missing",
        "vfio-sim,id=1x": "Parameter 'id' expects an identifier",
        "vfio-sim,id=x,initial-bytes=lots": "Parameter 'initial-bytes' expects size",
        "vfio-sim,id=x,load-ms=-1": "Parameter 'load-ms' expects uint32",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError) as info:
            parse_device(text)
        assert str(info.value) == message
    with pytest.raises(ValueError, match="Duplicate ID 'a' for device"):
        check_unique_ids([VfioSimConfig("a"), VfioSimConfig("a")])


def _flow(ack: bool) -> tuple[VfioSimDevice, VfioSimLoader, SwitchoverAckGate, list[float]]:
    cfg = VfioSimConfig(
        "gpu0", initial_bytes=3 << 20, state_bytes=64 << 10, load_ms=500, dirty_rate=1 << 20
    )
    src = VfioSimDevice(cfg, seed=9)
    gate = SwitchoverAckGate(enabled=ack)
    dst = VfioSimLoader(cfg, gate)
    assert gate.open_return_path() is False or not ack
    src.save_setup(switchover_ack=ack)
    assert src.pending_bytes() == (3 << 20) + (64 << 10)
    acks: list[float] = []
    now = 0.0
    while src.initial_remaining:
        for chunk in src.save_iterate(1 << 20):
            if dst.receive(chunk, now):
                acks.append(now)
        now += 0.1
        src.advance(now)
    assert dst.initial_received == 3 << 20
    return src, dst, gate, acks


def test_flow_with_switchover_ack() -> None:
    src, dst, gate, acks = _flow(ack=True)
    assert src.initial_data_sent and dst.initial_complete
    assert gate.pending == 1 and not acks
    deadline = dst.next_deadline()
    assert deadline is not None
    assert dst.poll(deadline - 0.001) is False
    # Dirty state keeps flowing while the destination works.
    for chunk in src.save_iterate(1 << 30):
        assert chunk.kind is DeviceChunkKind.DIRTY
        dst.receive(chunk, deadline - 0.001)
    assert dst.poll(deadline) is True  # approval -> counter 0 -> the ACK goes out
    assert gate.pending == 0 and gate.ack_sent
    assert dst.next_deadline() is None
    src.advance(deadline + 1)
    src.set_running(False, deadline + 1)
    final = src.save_complete()
    assert final[-1].kind is DeviceChunkKind.END
    for chunk in final:
        dst.receive(chunk, deadline + 1)
    assert dst.ready(deadline + 1)
    assert dst.digest() == src.digest()


def test_flow_without_switchover_ack_loads_in_stop_and_copy() -> None:
    src, dst, _gate, acks = _flow(ack=False)
    assert not src.initial_data_sent and not dst.initial_complete
    assert dst.next_deadline() is None  # no work starts during precopy
    for chunk in src.save_complete():
        dst.receive(chunk, 10.0)
    assert dst.next_deadline() == pytest.approx(10.5)
    assert not dst.ready(10.4) and dst.ready(10.5)
    assert dst.digest() == src.digest() and not acks


def test_ack_at_once_without_devices_and_gate_errors() -> None:
    gate = SwitchoverAckGate(enabled=True)
    assert gate.open_return_path() is True
    with pytest.raises(DeviceLoadError):
        gate.approve()
    off = SwitchoverAckGate(enabled=False)
    assert off.open_return_path() is False


def test_loader_rejects_bad_chunks() -> None:
    from qmp_server.engine.devices import DeviceChunk

    cfg = VfioSimConfig("d", initial_bytes=8, state_bytes=16, load_ms=0)
    dst = VfioSimLoader(cfg, SwitchoverAckGate(enabled=False))
    with pytest.raises(DeviceLoadError, match="Received INIT_DATA_SENT but switchover ack"):
        dst.receive(DeviceChunk("d", DeviceChunkKind.INIT_DATA_SENT), 0.0)
    with pytest.raises(DeviceLoadError, match="offset"):
        dst.receive(DeviceChunk("d", DeviceChunkKind.INITIAL, 4, b"x"), 0.0)
    with pytest.raises(DeviceLoadError, match="beyond"):
        dst.receive(DeviceChunk("d", DeviceChunkKind.DIRTY, 10, b"x" * 10), 0.0)
    with pytest.raises(DeviceLoadError, match="incomplete"):
        dst.receive(DeviceChunk("d", DeviceChunkKind.END), 0.0)
