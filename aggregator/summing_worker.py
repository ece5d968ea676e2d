"""One summing worker process (:func:`main`), started by its coordinator (``aggregator/summing.py``).

It holds its own MQTT session on the shared subscription ``$share/<group>/fl/<fed>/r/+/masked/+``, so
the broker hands each unchunked masked input to one worker, and does what the in-process path does per
input (:meth:`aggregator.partial_sums.MaskedSum.check`: decode, round, signature, unpack, range). Then it
*claims* the device from the coordinator and adds the vector only once the claim is granted: the
coordinator alone decides which inputs count (exactly once, and only while its masked phase is open),
so the partial sums it collects cover exactly the devices of its U3 decision.

Frames on stdin/stdout: a 4-byte big-endian length, then the body. Coordinator -> worker bodies are
pickles (the worker trusts the parent that started it; the settings carry an ``MqttConfig``); worker ->
coordinator bodies are msgpack, so a worker that parsed hostile input can never hand its coordinator
code to run.

Coordinator -> worker: ``("settings", dict)`` first, then ``("open", round, federation, {device: key},
bits, length)``, ``("grant", round, device, ok)``, ``("finish", round)``, ``("stop",)``.
Worker -> coordinator: ``("ready", protocol)`` or ``("refused", reason)``, ``("opened", round)``,
``("claim", round, device, packed payload, refused)`` (the coordinator keeps payload and refusal report
as its own path does, for dealer exclusion), ``("refusal", sender, rule, reason, round)``,
``("relay", topic, payload)`` (a chunked input's manifest: the coordinator reassembles those itself),
``("sum", round, bytes, devices)``. End of stdin (the coordinator died) ends the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from aggregator.partial_sums import MaskedSum, shared_filter
from shared.errors import FedmqError, ProtocolError, WireError
from shared.mqtt import MqttConfig, MqttConnection
from shared.ratelimit import SenderLimits
from shared.supervision import INTERNAL_ERROR, rule_of
from shared.topics import MASKED, Topics
from shared.wire import ChunkManifest, Message, decode
from shared.wire.secagg import MaskedInput

log = logging.getLogger("aggregator.summing")

_HEADER = struct.Struct(">I")


def frame(obj: object) -> bytes:
    """A coordinator -> worker frame."""
    data = pickle.dumps(obj, protocol=5)
    return _HEADER.pack(len(data)) + data


def report(obj: tuple[Any, ...]) -> bytes:
    """A worker -> coordinator frame (msgpack: str, int, bytes, lists only)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, *, from_worker: bool = False) -> Any:
    """The next frame, or None at the end of the stream; a worker's frames are msgpack, never pickles."""
    try:
        header = await reader.readexactly(_HEADER.size)
        body = await reader.readexactly(_HEADER.unpack(header)[0])
    except asyncio.IncompleteReadError:
        return None
    return msgpack.unpackb(body, raw=False) if from_worker else pickle.loads(body)


class Worker:
    """The worker's state, without I/O: frames in, frames out through ``send``."""

    def __init__(self, settings: dict[str, Any], send: Callable[[tuple[Any, ...]], None]) -> None:
        self.topics = Topics(settings["federation"])
        self.max_bytes: int = settings["max_update_bytes"]
        self.send = send
        self.total: MaskedSum | None = None
        self.pending: dict[str, np.ndarray] = {}
        biggest = self.max_bytes  # the coordinator's per-sender budget (aggregator/intake.py)
        self.limits = SenderLimits(burst_bytes=2 * biggest + 1024 * 1024, bytes_per_s=biggest / 4)

    def on_control(self, message: tuple[Any, ...]) -> bool:
        """Handle one coordinator frame; False on ``stop``."""
        kind = message[0]
        if kind == "open":
            _, round_id, federation, identities, bits, length = message
            self.total = MaskedSum(federation=federation, round_id=round_id, directory=identities,
                                   bits=bits, length=length)  # fmt: skip
            self.pending.clear()
            self.send(("opened", round_id))
        elif kind == "grant":
            _, round_id, device, ok = message
            values = self.pending.pop(device, None)
            total = self.total
            if ok and values is not None and total is not None and total.round_id == round_id:
                total.add_vector(device, values)
        elif kind == "finish":
            total = self.total
            if total is not None and total.round_id == message[1]:
                self.send(("sum", total.round_id, total.sum.tobytes(), sorted(total.devices)))
            else:
                self.send(("sum", message[1], b"", []))
            self.total = None
            self.pending.clear()
        elif kind == "stop":
            return False
        return True

    def on_message(self, topic: str, payload: bytes) -> None:
        """Check one masked input and claim its device; bad input is reported (the coordinator logs and
        counts it like its own refusals), never raised."""
        sender, round_id = topic, None
        try:
            parsed = self.topics.parse_round(topic)
            sender, round_id = parsed.sender, parsed.round_id
            if parsed.kind != MASKED or parsed.chunk is not None:
                raise ProtocolError(f"{parsed.kind} message on the masked-input subscription")
            self.limits.check(sender, len(payload))
            if len(payload) > self.max_bytes:
                raise WireError(f"oversized payload: {len(payload)} bytes > {self.max_bytes}")
            message: Message = decode(payload, (MaskedInput, ChunkManifest), self.max_bytes)
            if isinstance(message, ChunkManifest):
                self.send(("relay", topic, payload))
                return
            total = self.total
            if total is None or round_id != total.round_id:
                now = "none" if total is None else total.round_id
                raise ProtocolError(f"masked for round {round_id}, current round is {now}")
            if sender in self.pending:
                return
            checked = total.check_message(message, sender)  # type: ignore[arg-type]
            if checked is not None:  # the packed payload and refusal report: the coordinator keeps them
                self.pending[sender] = checked[1]
                masked: MaskedInput = message  # type: ignore[assignment]
                self.send(("claim", round_id, sender, masked.payload, list(masked.refused)))
        except FedmqError as exc:
            self.send(("refusal", sender, rule_of(exc), str(exc), round_id))
        except Exception as exc:  # the per-message fault boundary: one bad input never ends the worker
            self.send(("refusal", sender, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", round_id))


async def serve(settings: dict[str, Any], reader: asyncio.StreamReader, out: Callable[[bytes], None]) -> None:
    """Connect, say ready (or why not), then sum until ``stop`` or the end of stdin."""
    mqtt: MqttConfig = settings["mqtt"]
    worker = Worker(settings, lambda message: out(report(message)))
    for message in settings.get("backlog", []):  # the open round, when restarted in the middle of one
        worker.on_control(message)
    stop = asyncio.Event()

    async def control() -> None:  # from the start: the end of stdin ends the worker in every state
        while (message := await read_frame(reader)) is not None and worker.on_control(message):
            pass
        stop.set()

    controller = asyncio.create_task(control())
    conn = MqttConnection(mqtt, [shared_filter(settings["group"], worker.topics.masked_inputs)])
    try:
        async with conn:
            if not await _connected(conn, stop, out):
                return
            while not stop.is_set():
                msg = await conn.next_message(0.2)
                if msg is not None:
                    payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
                    worker.on_message(str(msg.topic), payload)
    finally:
        controller.cancel()


async def _connected(conn: MqttConnection, stop: asyncio.Event, out: Callable[[bytes], None]) -> bool:
    """Wait for the broker, then say ready, or why this broker cannot carry workers (then False)."""
    name = conn.config.client_id
    waited = 0.0
    while not stop.is_set():
        try:
            await conn.wait_connected(2.0)
            break
        except FedmqError as exc:
            if conn.error is not None:  # refused for good (credentials, TLS)
                out(report(("refused", f"summing worker {name}: {exc}")))
                return False
            waited += 2.0
            if waited % 30 < 2:
                log.warning("summing worker %s still waiting for the broker: %s", name, exc)
    limits = conn.limits
    if stop.is_set() or limits is None:
        return False
    if not limits.shared_subscriptions:
        reason = (f"the broker at {limits.endpoint} offers no MQTT 5 shared subscriptions (it speaks "
                  f"MQTT {limits.protocol}): set summing_workers = 0")  # fmt: skip
        out(report(("refused", reason)))
        return False
    out(report(("ready", limits.protocol)))
    return True


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", 0))
    output = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frame stream
    settings = (await read_frame(reader) or ("settings", None))[1]
    if settings is None:
        return
    logging.basicConfig(
        level=settings.get("log_level", "INFO"),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s summing-{settings['mqtt'].client_id}: %(message)s",
    )
    loop.add_signal_handler(signal.SIGTERM, lambda: reader.feed_eof())

    def out(data: bytes) -> None:
        output.write(data)
        output.flush()

    await serve(settings, reader, out)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the coordinator stops us
    asyncio.run(_main())


if __name__ == "__main__":
    main()
