"""Shared fixtures: the simulator served in-process on a real transport, and real clients.

`bus` is parametrized over ["tcp", "rtu"]: a free TCP port on 127.0.0.1, or a socat pty pair
(the server on one end, the client on the other). It yields the world, the server handle and a
connected pymodbus async client; `await bus.raw()` opens a raw byte-level port to the same
server, for frames no well-behaved client would send. `rig` (tests/rig.py) is the bus with device
time frozen, for datasheet conformance tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus import Bus, modbus_client
from rig import Rig
from sim.clock import SimClock
from sim.server import start_rtu_server, start_tcp_server
from sim.world import SimWorld
from sim.ptypair import PtyPair


@pytest.fixture(params=["tcp", "rtu"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    world = SimWorld(clock=SimClock(time_scale=1.0), seed=0)
    pair: PtyPair | None = None
    if request.param == "tcp":
        server = await start_tcp_server(world, host="127.0.0.1", port=0)
        client_end = f"127.0.0.1:{server.port}"
    else:
        pair = PtyPair().start()
        server = await start_rtu_server(world, port=pair.server_end)
        client_end = pair.client_end
    client = modbus_client(request.param, client_end)
    bus = Bus(world=world, server=server, client=client, transport=request.param, client_end=client_end)
    try:
        assert await client.connect(), f"client could not connect to {client_end}"
        yield bus
    finally:
        await bus.close()
        await server.stop()
        if pair is not None:
            pair.stop()


@pytest.fixture
def rig(bus: Bus) -> Rig:
    """The bus with device time frozen: conformance tests move it with `rig.step_ms`."""
    bus.world.clock.freeze()
    return Rig(world=bus.world, client=bus.client, transport=bus.transport)
