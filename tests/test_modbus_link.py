"""The bus owner: one request at a time, every failure classified and counted, reconnect after N.

Against the simulator's real Modbus/TCP server in-process, with link faults from its bench.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from controller.devices import FT8_SPEC, LS4_SPEC, DeviceMismatch, check_device
from controller.modbus_link import BusLink, DeviceRefused, LinkCorrupt, LinkDown, LinkSettings, LinkTimeout, Transport
from protocol import ls4
from sim.clock import SimClock
from sim.server import start_tcp_server
from sim.world import SimWorld


@pytest.fixture
async def served() -> AsyncIterator[tuple[SimWorld, BusLink]]:
    world = SimWorld(clock=SimClock())
    server = await start_tcp_server(world, host="127.0.0.1", port=0)
    link = BusLink(LinkSettings(name="main", transport=Transport.TCP, host="127.0.0.1", port=server.port or 0, request_timeout_s=0.1, reconnect_after_failures=2))
    await link.start()
    yield world, link
    await link.stop()
    await server.stop()


async def test_reads_and_writes(served) -> None:
    world, link = served
    words = await link.read_input(unit=1, address=0, count=ls4.INPUT_COUNT)
    assert ls4.LS4Snapshot.from_words(words).map_version == 1
    await link.write_registers(unit=1, address=16, values=[1234])
    assert world.ls4.holding["RAMP_RATE"][0] == 1234
    assert link.counters.ok == 2 and link.up


async def test_concurrent_callers_are_serialised_by_the_owner(served) -> None:
    _, link = served
    results = await asyncio.gather(*(link.read_input(unit=1 + i % 2, address=0, count=4) for i in range(12)))
    assert len(results) == 12 and link.counters.ok == 12


async def test_exception_response_is_counted_and_raised(served) -> None:
    _, link = served
    with pytest.raises(DeviceRefused) as err:
        await link.write_registers(unit=1, address=2, values=[10])  # WATCHDOG_TIMEOUT below 50
    assert err.value.code == 3
    assert link.counters.exception_responses == 1 and link.counters.consecutive_failures == 0


async def test_dropped_reply_is_a_timeout_and_reconnect_follows(served) -> None:
    world, link = served
    await link.read_input(unit=1, address=0, count=1)
    world.bench(["link", "drop", "2"])
    for _ in range(2):
        with pytest.raises(LinkTimeout):
            await link.read_input(unit=1, address=0, count=1)
    assert link.counters.timeouts == 2
    reconnects = link.counters.reconnects
    await link.read_input(unit=1, address=0, count=1)  # a fresh client after 2 failures
    assert link.counters.reconnects == reconnects + 1 and link.counters.consecutive_failures == 0


async def test_corrupt_reply_is_counted_apart_from_timeouts(served) -> None:
    world, link = served
    world.bench(["link", "corrupt", "1"])
    with pytest.raises((LinkCorrupt, LinkTimeout)):
        await link.read_input(unit=1, address=0, count=1)
    assert link.counters.crc_errors + link.counters.timeouts == 1
    assert await link.read_input(unit=1, address=0, count=1)


async def test_no_server_is_link_down() -> None:
    link = BusLink(LinkSettings(name="x", transport=Transport.TCP, host="127.0.0.1", port=1, request_timeout_s=0.05))
    await link.start()
    try:
        with pytest.raises(LinkDown):
            await link.read_input(unit=1, address=0, count=1)
        assert link.counters.connection_errors >= 1 and not link.up
    finally:
        await link.stop()


async def test_identity_check_accepts_the_datasheet_devices(served) -> None:
    _, link = served
    ident = await check_device(link, unit=1, spec=LS4_SPEC)
    assert (ident.product_code, ident.firmware, ident.map_version) == ("LS-4", "2.1", 1)
    assert (await check_device(link, unit=2, spec=FT8_SPEC)).product_code == "FT-8"


@pytest.mark.parametrize(("bench", "message"), [(["ls4", "firmware", "2", "2.1"], "register map version 2"), (["ls4", "firmware", "1", "3.0"], "firmware 3.0")])
async def test_identity_check_refuses_other_firmware(served, bench, message: str) -> None:
    world, link = served
    world.bench(bench)
    with pytest.raises(DeviceMismatch, match=message):
        await check_device(link, unit=1, spec=LS4_SPEC)


async def test_identity_check_refuses_the_wrong_product_on_a_unit(served) -> None:
    _, link = served
    with pytest.raises(DeviceMismatch, match="FT-8"):
        await check_device(link, unit=2, spec=LS4_SPEC)
