"""The Clock: simulated speed, manual stepping, autojump, and the real clock."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import pytest

from station.clock import RealClock, SimClock, to_epoch_s

START = datetime(2016, 12, 19, 16, 40, tzinfo=UTC)


async def test_manual_clock_holds_time_until_advanced() -> None:
    clock = SimClock(START, manual=True)
    assert clock.now() == START
    await asyncio.sleep(0.01)
    assert clock.now() == START
    await clock.advance(90)
    assert clock.now() == START + timedelta(seconds=90)


async def test_sleep_until_wakes_at_the_right_simulated_time() -> None:
    clock = SimClock(START, manual=True)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, at: datetime) -> None:
        await clock.sleep_until(at)
        woke.append((name, clock.now_s()))

    tasks = [
        asyncio.create_task(sleeper("b", START + timedelta(seconds=20))),
        asyncio.create_task(sleeper("a", START + timedelta(seconds=10))),
        asyncio.create_task(sleeper("late", START + timedelta(seconds=100))),
    ]
    await clock.advance(15)
    assert woke == [("a", START.timestamp() + 10)]
    await clock.advance(10)
    assert woke[1] == ("b", START.timestamp() + 20)
    assert clock.pending_sleepers == 1
    await clock.advance_to(START + timedelta(seconds=100))
    assert woke[2] == ("late", START.timestamp() + 100)
    await asyncio.gather(*tasks)


async def test_manual_clock_wakes_periodic_sleeper_each_period() -> None:
    clock = SimClock(START, manual=True)
    ticks: list[float] = []

    async def loop() -> None:
        for _ in range(5):
            await clock.sleep(0.05)
            ticks.append(clock.now_s() - START.timestamp())

    task = asyncio.create_task(loop())
    await clock.advance(1.0)
    await task
    assert ticks == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])


async def test_sleep_in_the_past_returns_at_once() -> None:
    clock = SimClock(START, manual=True)
    await clock.sleep_until(START - timedelta(hours=1))
    await clock.sleep(-5)
    assert clock.now() == START


async def test_scaled_clock_runs_speed_times_faster_than_the_loop() -> None:
    clock = SimClock(START, speed=1000.0)
    loop = asyncio.get_running_loop()
    t0_loop, t0_clock = loop.time(), clock.now_s()
    await clock.sleep(50.0)  # 50 simulated seconds = 50 ms of loop time
    elapsed_loop = loop.time() - t0_loop
    elapsed_clock = clock.now_s() - t0_clock
    assert elapsed_clock >= 50.0
    # The ratio is what the clock promises, whatever the machine's load.
    assert elapsed_clock / elapsed_loop == pytest.approx(1000.0, rel=1e-3)


async def test_autojump_clock_jumps_when_everyone_waits() -> None:
    clock = SimClock(START, speed=math.inf)
    order: list[str] = []

    async def worker(name: str, delay_s: float) -> None:
        await clock.sleep(delay_s)
        order.append(name)

    await asyncio.gather(worker("hour", 3600), worker("minute", 60), worker("day", 86400))
    assert order == ["minute", "hour", "day"]
    assert clock.now() == START + timedelta(days=1)


async def test_real_clock_is_utc_and_sleeps() -> None:
    clock = RealClock()
    assert clock.now().tzinfo is UTC
    before = clock.now_s()
    await clock.sleep(0.02)
    assert clock.now_s() >= before + 0.02


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_epoch_s(datetime(2016, 12, 19))


def test_invalid_speed_is_refused() -> None:
    with pytest.raises(ValueError, match="speed"):
        SimClock(START, speed=0)


async def test_advance_is_only_for_manual_clocks() -> None:
    with pytest.raises(RuntimeError, match="manual"):
        await SimClock(START, speed=2).advance(1)


async def test_autojump_waits_for_work_in_threads() -> None:
    clock = SimClock(START, speed=math.inf)
    seen: list[float] = []

    async def ticker() -> None:
        for _ in range(100):
            await clock.sleep(1.0)

    def slow_work() -> float:
        import time as wall

        wall.sleep(0.2)
        return clock.now_s()

    tick = asyncio.create_task(ticker())
    await clock.sleep(0)  # installs the counting executor
    before = clock.now_s()
    seen.append(await asyncio.to_thread(slow_work) - before)
    await tick
    # While the thread worked, the ticker's sleeps did not move simulated time.
    assert seen[0] < 2.0
