"""LoopWatch sees a loop that is held up, and says so in the log."""

from __future__ import annotations

import asyncio
import logging
import time

from koe.loop_watch import LoopWatch


async def test_a_blocked_loop_shows_as_late_wakeups(caplog):
    watch = LoopWatch(asyncio.get_running_loop()).start()
    await asyncio.sleep(0.2)
    calm = watch.lag()
    with caplog.at_level(logging.WARNING, logger="koe.loop"):
        time.sleep(0.25)  # what a slow rerun on Streamlit's loop does to the audio
        await asyncio.sleep(0.1)
    lag = watch.lag()
    watch.stop()
    await asyncio.sleep(0)

    assert calm.wakeups >= 5 and calm.worst_ms < 250
    assert lag.wakeups > calm.wakeups
    assert lag.worst_ms >= 200  # the 250 ms block, less at most one 20 ms interval and timer slack
    assert lag.p50_ms < lag.worst_ms
    assert any("stalled" in record.getMessage() for record in caplog.records)


async def test_old_wakeups_leave_the_window():
    watch = LoopWatch(asyncio.get_running_loop(), window_s=0.3).start()
    await asyncio.sleep(0.05)
    time.sleep(0.15)
    await asyncio.sleep(0.05)
    assert watch.lag().worst_ms >= 100
    await asyncio.sleep(0.5)  # the stall is older than the window now
    assert watch.lag().worst_ms < 100
    watch.stop()
