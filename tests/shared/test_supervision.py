"""Supervisor.watch: the main coroutine's result or the give-up's cause, and a cancelled main coroutine's
clean-up runs before the watcher returns (bounded)."""

from __future__ import annotations

import asyncio

import pytest

from shared import supervision
from shared.supervision import SupervisionError, Supervisor


async def test_watch_returns_what_main_returns():
    assert await Supervisor("t").watch(asyncio.sleep(0, result=7)) == 7


async def test_a_task_given_up_cancels_main_and_raises_why():
    supervisor = Supervisor("t", max_failures=2, backoff_s=0.001)
    cleaned = asyncio.Event()

    async def broken() -> None:
        raise ValueError("bad")

    async def main() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # a clean-up that takes a few loop turns
            cleaned.set()

    supervisor.start("broken", broken)
    with pytest.raises(SupervisionError, match="broken failed: ValueError: bad"):
        await asyncio.wait_for(supervisor.watch(main()), 30)
    assert cleaned.is_set() and supervisor.failures["broken"] == 2
    await supervisor.close()


async def test_cancelling_the_watcher_lets_main_finish_its_clean_up_first():
    """The round loop's clean-up (closing its round, a last publish) ran after ``Aggregator.run`` had
    returned, on a connection its caller was already closing."""
    supervisor = Supervisor("t")
    started, cleaned = asyncio.Event(), asyncio.Event()

    async def main() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)
            cleaned.set()

    watcher = asyncio.create_task(supervisor.watch(main()))
    await asyncio.wait_for(started.wait(), 30)
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert cleaned.is_set()


async def test_a_clean_up_that_hangs_is_given_up_after_the_grace(monkeypatch, caplog):
    monkeypatch.setattr(supervision, "STOP_GRACE_S", 0.1)
    supervisor = Supervisor("t")
    started, release = asyncio.Event(), asyncio.Event()

    async def main() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await release.wait()  # a clean-up that hangs

    watcher = asyncio.create_task(supervisor.watch(main()))
    await asyncio.wait_for(started.wait(), 30)
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(watcher, 30)
    assert "did not end within" in caplog.text
    release.set()  # (let the hung clean-up end before the loop closes)
    await asyncio.sleep(0.01)
