"""A loopback TCP fault proxy: put it between an MQTT client and the broker to make the link misbehave.

The chaos tests and the soak benchmark route a component's broker connection through a
:class:`FaultProxy` (``mqtt://127.0.0.1:<proxy.port>``) and then, while rounds run, make the link do what
cellular links do:

* :meth:`FaultProxy.drop` -- reset every open connection (a lost link; the client reconnects at once);
* :meth:`FaultProxy.stall` -- forward nothing for a while, then carry on (bytes are held, not lost);
* :meth:`FaultProxy.throttle` -- cap each direction to so many bytes per second (a slow link);
* :meth:`FaultProxy.half_open` -- the broker side goes away but the client's socket stays open and
  silent, so only the client's keepalive can tell (a NAT that forgot the flow);
* :meth:`FaultProxy.refuse` -- refuse new connections (the link is down for a while).

It runs on the caller's event loop, listens on a free loopback port only, and counts what it forwarded
(``bytes_up``/``bytes_down``) and what it did (``drops``, ``connections``), so tests can check that a
fault really happened rather than assume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass

from shared.errors import FedmqError

log = logging.getLogger(__name__)

_READ = 16 * 1024


class FaultProxyError(FedmqError):
    """The proxy could not start (no free port, or the upstream address is invalid)."""


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's streams and the upstream (broker) streams."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]]
    silent: bool = False  # half-open: keep the client socket, forward nothing, never close it


class FaultProxy:
    """``async with FaultProxy(broker_port) as proxy:`` then connect clients to ``proxy.port``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._rate: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.drops = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        except OSError as exc:
            raise FaultProxyError(f"fault proxy could not listen: {exc}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("fault proxy 127.0.0.1:%d -> %s:%d", self.port, self.upstream_host, self.upstream_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._flowing.set()
        for link in list(self._links):
            self._close_link(link)

    # -- faults ----------------------------------------------------------------------------------

    def drop(self) -> int:
        """Reset every open connection (both sides see the link die); returns how many were dropped."""
        links = [link for link in self._links if not link.silent]
        for link in links:
            self._close_link(link, reset=True)
        self.drops += len(links)
        return len(links)

    async def stall(self, seconds: float) -> None:
        """Forward nothing for ``seconds`` (connections stay open; held bytes flow afterwards)."""
        self._flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._flowing.set()

    def throttle(self, bytes_per_s: float | None) -> None:
        """Cap each direction of each connection to ``bytes_per_s`` (None: no cap)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be > 0 or None")
        self._rate = bytes_per_s

    def half_open(self) -> int:
        """Close the broker side of every connection but leave the client's socket open and silent."""
        links = [link for link in self._links if not link.silent]
        for link in links:
            link.silent = True
            for task in link.tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                link.upstream.close()
        return len(links)

    def refuse(self, refusing: bool = True) -> None:
        """Refuse (accept then reset) new connections while ``refusing``."""
        self._refusing = refusing

    # -- forwarding ------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self._reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), 5.0
            )
        except (OSError, asyncio.TimeoutError):
            self._reset(writer)  # the broker is down: the client sees a refused connection
            return
        self.connections += 1
        link = _Link(writer, up_writer, [])
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link, up=True)),
            asyncio.create_task(self._pump(up_reader, writer, link, up=False)),
        ]
        self._links.add(link)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, up: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(_READ)
                if not data:
                    break
                await self._flowing.wait()
                if self._rate is not None:
                    await self._pace(len(data))
                writer.write(data)
                await writer.drain()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not link.silent:
                self._close_link(link)

    async def _pace(self, size: int) -> None:
        """Hold a read of ``size`` bytes for size / rate seconds: at most ``rate`` bytes/s each way."""
        assert self._rate is not None
        await asyncio.sleep(size / self._rate)

    def _close_link(self, link: _Link, reset: bool = False) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for writer in (link.client, link.upstream):
            if reset:
                self._reset(writer)
            else:
                with contextlib.suppress(Exception):
                    writer.close()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Close with RST rather than FIN, as a dead link looks to the peer."""
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(Exception):
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
