"""Masked-input ingestion spread over worker processes (issue 16, part 5): partial sums, then combine.

SecAgg+ masks cancel only in the sum, and the sum is modular, so it splits freely: if worker ``w`` adds
the masked vectors of the devices in its partition modulo 2^32, the coordinator's sum of the partial
sums, reduced modulo 2^b, is bit for bit the sum one process would have made (addition modulo 2^32 is
associative and commutative, and 2^b divides 2^32). The coordinator then unmasks as before
(:meth:`shared.secagg.SecAggServer.unmask` subtracts the reconstructed masks from that sum).

What a worker does per masked input is what the single-process path does in
:meth:`shared.secagg.SecAggServer.add_masked` -- decode, check round and shape, verify the device's
signature (a BLAKE2b of the payload, then Ed25519), unpack the ``bits``-bit coordinates, range-check
and add -- so this is where the per-message CPU goes (``benchmarks/scale.py --scaleout``).

Partitioning is by device (:func:`partition_of`), not by message: a device's chunks and duplicates all
reach the same worker, which is also what makes MQTT shared subscriptions (``$share/<group>/...``) unfit
for chunked uploads -- the broker would spread one device's chunks over workers. Workers run in
processes (``multiprocessing``, fork where available), fed over pipes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from shared.codec import unpack
from shared.errors import FedmqError, SecAggError
from shared.mqtt import MqttConfig, MqttConnection
from shared.secagg import keys
from shared.wire import decode
from shared.wire.secagg import MaskedInput

log = logging.getLogger(__name__)

_FINISH = b""  # an empty frame tells a worker to send its partial sum


def partition_of(device: str, workers: int) -> int:
    """Stable worker index of ``device`` (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(device.encode(), digest_size=8).digest(), "big") % workers


class MaskedSum:
    """Running sum modulo 2^32 of verified masked inputs of one round: one worker's (or the whole) share.

    :meth:`add` raises :class:`SecAggError` for an input that is misrouted, from an unknown device,
    badly signed, of the wrong shape, or out of range; it returns False for a duplicate.
    """

    def __init__(
        self, *, federation: str, round_id: int, directory: Mapping[str, bytes], bits: int, length: int
    ) -> None:
        self.federation = federation
        self.round_id = round_id
        self.directory = directory
        self.bits = bits
        self.length = length
        self.sum = np.zeros(length, np.uint32)
        self.devices: set[str] = set()

    def add(self, data: bytes) -> bool:
        checked = self.check(data)
        if checked is None:
            return False
        self.add_vector(*checked)
        return True

    def check(self, data: bytes, sender: str | None = None) -> tuple[str, np.ndarray] | None:
        """Verify one encoded input (from ``sender``, the topic's device, when given): its device and
        unpacked vector, None for a duplicate; raises :class:`SecAggError` (or WireError) otherwise."""
        return self.check_message(decode(data, MaskedInput), sender)

    def check_message(self, message: MaskedInput, sender: str | None = None) -> tuple[str, np.ndarray] | None:
        """:meth:`check` of a decoded input."""
        if message.federation != self.federation or message.round != self.round_id:
            raise SecAggError(f"masked input for {message.federation!r}/{message.round} (misrouted)")
        if sender is not None and message.device != sender:
            raise SecAggError(f"masked input of {message.device!r} on the topic of {sender!r}")
        if message.device in self.devices:
            return None
        if message.bits != self.bits or message.length != self.length:
            raise SecAggError(f"masked input of {message.device!r} has bits={message.bits} "
                              f"length={message.length}")  # fmt: skip
        identity = self.directory.get(message.device)
        if identity is None:
            raise SecAggError(f"masked input from {message.device!r}, not in this round's set")
        keys.verify(identity, message.signed_bytes(), message.signature, "masked input")
        values = unpack(message.payload, self.bits, self.length)
        if self.length and int(values.max()) >> self.bits:
            raise SecAggError(f"masked vector of {message.device!r} has values outside Z_2^{self.bits}")
        return message.device, values

    def add_vector(self, device: str, values: np.ndarray) -> None:
        """Add a vector :meth:`check` accepted (once per device)."""
        np.add(self.sum, values, out=self.sum)
        self.devices.add(device)


def _worker(pipe: Connection, settings: dict[str, object]) -> None:
    """A worker's loop: add every frame it is sent; on the finish frame, send (sum, devices, refused)."""
    total = MaskedSum(**settings)  # type: ignore[arg-type]
    refused: list[str] = []
    while True:
        data = pipe.recv_bytes()
        if data == _FINISH:
            break
        try:
            total.add(data)
        except FedmqError as exc:
            refused.append(str(exc))
        except Exception as exc:  # the per-message fault boundary: one bad input never ends the worker
            refused.append(f"{type(exc).__name__}: {exc}")
    pipe.send_bytes(total.sum.tobytes())
    pipe.send((sorted(total.devices), refused))
    pipe.close()


class ShardedMaskedSum:
    """The coordinator: ``workers`` processes, each summing the masked inputs of its devices.

    ``with ShardedMaskedSum(workers=2, ...) as s: s.submit(device, data) ...; total, devices = s.finish()``.
    ``finish`` returns the combined sum modulo 2^b and the devices whose input was added; inputs a worker
    refused are logged (one line each) and listed in :attr:`refused`.
    """

    def __init__(
        self,
        *,
        workers: int,
        federation: str,
        round_id: int,
        directory: Mapping[str, bytes],
        bits: int,
        length: int,
        timeout_s: float = 300.0,
    ) -> None:
        if workers < 1:
            raise SecAggError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.bits = bits
        self.length = length
        self.timeout_s = timeout_s
        self.refused: list[str] = []
        settings = {"federation": federation, "round_id": round_id, "directory": dict(directory),
                    "bits": bits, "length": length}  # fmt: skip
        methods = multiprocessing.get_all_start_methods()
        context: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        for _ in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(theirs, settings), daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(mine)
            self._processes.append(process)

    def submit(self, device: str, data: bytes) -> None:
        """Hand one encoded masked input to the worker that owns ``device``."""
        self._pipes[partition_of(device, self.workers)].send_bytes(data)

    def finish(self) -> tuple[np.ndarray, frozenset[str]]:
        """Collect the partial sums and combine them: the sum modulo 2^b of every accepted input."""
        for pipe in self._pipes:
            pipe.send_bytes(_FINISH)
        total = np.zeros(self.length, np.uint32)
        devices: set[str] = set()
        for pipe in self._pipes:
            if not pipe.poll(self.timeout_s):
                raise SecAggError(f"a summing worker sent nothing within {self.timeout_s:.0f}s")
            np.add(total, np.frombuffer(pipe.recv_bytes(), np.uint32), out=total)
            accepted, refused = pipe.recv()
            devices.update(accepted)
            for reason in refused:
                log.warning("summing worker refused a masked input: %s", reason)
            self.refused.extend(refused)
        if self.bits < 32:
            np.bitwise_and(total, np.uint32((1 << self.bits) - 1), out=total)
        self.close()
        return total, frozenset(devices)

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.close()
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> ShardedMaskedSum:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def shared_filter(group: str, topic_filter: str) -> str:
    """An MQTT shared subscription (v5, also Mosquitto under 3.1.1): the broker hands each message of
    ``topic_filter`` to one session of ``group``, so the workers split the intake between them."""
    return f"$share/{group}/{topic_filter}"


class MqttSummer:
    """One ingestion worker with its own MQTT session on a shared subscription to the masked inputs.

    Here the broker spreads the intake itself -- the MQTT parsing and per-message overhead that a
    single aggregator process pays for every frame -- not just the summing. It needs unchunked masked
    inputs (a whole input per PUBLISH: the broker would spread one device's chunks over workers) and a
    broker with shared subscriptions (Mosquitto, EMQX, HiveMQ, VerneMQ; ``docs/brokers.md``); elsewhere
    use :class:`ShardedMaskedSum` (partition by device behind one intake).
    """

    def __init__(self, mqtt: MqttConfig, topic_filter: str, *, group: str, total: MaskedSum) -> None:
        self.total = total
        self.refused: list[str] = []
        self.received = 0
        self.conn = MqttConnection(mqtt, [shared_filter(group, topic_filter)])

    async def run(self, stop: asyncio.Event) -> None:
        """Sum what arrives until ``stop`` is set; bad inputs are logged (one line) and counted."""
        async with self.conn:
            await self.conn.wait_connected()
            while not stop.is_set():
                msg = await self.conn.next_message(0.2)
                if msg is None:
                    continue
                payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
                self.received += 1
                try:
                    self.total.add(payload)
                except FedmqError as exc:
                    log.warning("summing worker refused a masked input on %s: %s", msg.topic, exc)
                    self.refused.append(str(exc))


__all__ = ["MaskedSum", "MqttSummer", "ShardedMaskedSum", "partition_of", "shared_filter"]
