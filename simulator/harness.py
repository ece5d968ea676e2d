"""The one way fedmq runs a set of Python devices: connect them all, run their message loops, and stop
and disconnect them all when the block ends (even on an error). The fleet simulator and the tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from edge_client.client import EdgeClient


@contextlib.asynccontextmanager
async def running(devices: Sequence[EdgeClient]) -> AsyncIterator[Sequence[EdgeClient]]:
    """``async with running(devices): ...`` -- every device connected and handling messages inside."""
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for device in devices:
            await stack.enter_async_context(device)
        tasks = [asyncio.create_task(device.run(stop)) for device in devices]
        try:
            yield devices
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
