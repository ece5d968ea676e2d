"""Summing workers wired into the aggregator (``summing_workers = N``): the coordinator's side.

The aggregator starts N worker processes (:mod:`aggregator.summing_worker`), each with its own MQTT
session on a shared subscription of the masked inputs, and stops subscribing to those itself
(:meth:`shared.topics.Topics.rounds_but_masked`). Per secure round:

1. When the share phase closes, :meth:`SummingPool.open_round` sends every worker U2's verify keys and
   the round's shape, and waits for each to acknowledge *before* the U2 notice goes out (so no honest
   input can reach a worker that does not know the round).
2. A worker verifies an input, then claims its device; the coordinator grants a claim only while its
   masked phase is open and only once per device (:meth:`shared.secagg.SecAggServer.claim_masked`:
   the same count the in-process path keeps, so early close and the unmask-feasibility check work
   unchanged). A duplicate that reached another worker, or an input that arrives after the close,
   is refused there: the accepted set is the coordinator's decision, not the workers'.
3. Before the phase closes, :meth:`SummingPool.collect` asks each worker for its partial sum and
   devices (with a deadline), checks the devices are exactly those it granted, and adds the partial
   sums into the round's modular sum; U3 is then made from the granted set, as before.

A worker that dies (or misses the deadline) loses its partial sum: its granted devices are released
and count as dropouts (their pair masks are removed with their mask keys, as for any device that
shared but did not mask); the round closes if the rest can be unmasked, and is abandoned with that
cause otherwise. The dead worker is restarted (with the open round, if any). Chunked inputs: a
shared subscription would spread one device's chunks over workers, so workers take only unchunked
inputs; a chunked input's manifest reaches a worker, which relays it, and the coordinator reassembles
and sums that input itself (set devices' ``chunk_limit`` above the masked size to keep it off the
coordinator). Brokers without MQTT 5 shared subscriptions (NATS) are refused with one line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.summing_worker import frame, read_frame
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.secagg import RoundAbandoned
from shared.supervision import Supervisor, run_to_end
from shared.wire.secagg import MaskedInput

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig
    from aggregator.secure import SecureRound

log = logging.getLogger("aggregator.summing")

#: Seconds a worker has to start and reach the broker, to acknowledge a round, to hand in its sum.
READY_TIMEOUT_S = 60.0
OPEN_TIMEOUT_S = 10.0
COLLECT_TIMEOUT_S = 30.0


def worker_account(account: str, index: int) -> str:
    """The broker account (and client id) of summing worker ``index`` of the aggregator ``account``."""
    return f"{account}-sum{index}"


def worker_mqtt(mqtt: MqttConfig, index: int) -> MqttConfig:
    """Worker ``index``'s session: account and client id :func:`worker_account` (the broker binds client
    id to account), with the aggregator's password (``fedmq init --summing-workers`` makes them).

    The session ends with the connection (expiry 0): Mosquitto keeps handing a share of the group's
    messages to a member whose session outlives it, so a dead or retired worker's persistent session
    would swallow inputs until it expired; without it the live workers get them all at once."""
    user = worker_account(mqtt.username, index) if mqtt.username else None
    client_id = worker_account(mqtt.client_id, index)
    return replace(mqtt, client_id=client_id, username=user, session_expiry_s=0)


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Future[int] | None = None
    summed: asyncio.Future[tuple[bytes, list[str]]] | None = None
    granted: set[str] = field(default_factory=set)
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def send(self, message: tuple[Any, ...]) -> bool:
        """Write one frame to the worker; False (nothing sent) when it is not running."""
        process = self.process
        if process is None or process.stdin is None or process.returncode is not None:
            return False
        with contextlib.suppress(ConnectionError, RuntimeError):  # it died: its supervisor restarts it
            process.stdin.write(frame(message))
            return True
        return False


@dataclass
class _Round:
    secure: SecureRound
    open: tuple[Any, ...]
    closing: bool = False


class SummingPool:
    """N supervised summing worker processes; ``await start()``, ``await ready()``, per round
    ``await open_round(secure, u2)`` ... ``await collect()``, finally ``await close()``.

    ``relay(topic, payload)`` takes what workers pass back (manifests of chunked inputs) into the
    coordinator's own intake; ``refused(sender, rule, reason, round)`` counts and logs a worker's
    refusal like the coordinator's own.
    """

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        relay: Callable[[str, bytes], None],
        refused: Callable[[str, str, str, int | None], None],
        log_level: str | None = None,
    ) -> None:
        self.config = config
        self.slots = [_Slot(i) for i in range(config.summing_workers)]
        self.relay = relay
        self.refused = refused
        self.log_level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.error: ConfigError | None = None
        self.round: _Round | None = None
        #: Inputs each worker summed into closed phases, and (round, devices) lost with a worker.
        self.summed: collections.Counter[int] = collections.Counter()
        self.lost: list[tuple[int, frozenset[str]]] = []
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisor: Supervisor | None = None
        #: Set once the workers first connected (or the start-up wait ended).
        self.started = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.returncode is None]

    async def run(self, supervisor: Supervisor) -> None:
        """The supervised task: start the workers, give up the aggregator with the cause if the broker
        cannot carry them (one line, e.g. NATS), stop them when cancelled."""
        self._supervisor = supervisor
        try:
            await self.start()
            try:
                await self.ready()
            except ConfigError:
                return  # _on_frame told the supervisor
            await asyncio.Event().wait()
        finally:  # to the end even if cancelled again meanwhile: cut short, workers outlived the loop
            await run_to_end(asyncio.ensure_future(self.close()))

    async def start(self) -> None:
        self._closing = False
        for slot in self.slots:
            self._tasks.append(asyncio.create_task(self._supervise(slot), name=f"summing-{slot.index}"))

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every worker is connected; ConfigError when the broker cannot carry them."""
        waits = [asyncio.ensure_future(slot.ready.wait()) for slot in self.slots]
        try:
            await asyncio.wait(waits, timeout=timeout)
        finally:
            for waiter in waits:
                waiter.cancel()
            self.started.set()
        if self.error is not None:
            raise self.error
        late = [s.index for s in self.slots if not s.ready.is_set()]
        if late:
            log.warning("summing workers %s not connected after %.0fs; rounds go on without them",
                        late, timeout)  # fmt: skip

    async def wait_started(self) -> None:
        """Until the workers first connected (or :data:`READY_TIMEOUT_S` passed): rounds start after."""
        await self.started.wait()
        if self.error is not None:
            raise self.error

    # -- supervision -----------------------------------------------------------------------------

    async def _supervise(self, slot: _Slot) -> None:
        """Run worker ``slot`` until the pool closes, restarting it after each exit."""
        failures = 0
        while not self._closing and self.error is None:
            started = time.monotonic()
            try:
                await self._run_worker(slot)
            except Exception:  # never let the supervisor die: log, back off, restart
                log.exception("summing worker %d failed", slot.index)
            if self._closing or self.error is not None:
                return
            failures = failures + 1 if time.monotonic() - started < 30 else 1
            slot.restarts += 1
            await asyncio.sleep(min(5.0, 0.2 * 2 ** (failures - 1)))

    async def _run_worker(self, slot: _Slot) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from aggregator.summing_worker import main; main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 30,
        )  # fmt: skip
        slot.process = process
        slot.ready.clear()
        backlog = [self.round.open] if self.round is not None and not self.round.closing else []
        if backlog:
            slot.opened = asyncio.get_running_loop().create_future()
        settings = {
            "mqtt": worker_mqtt(self.config.mqtt, slot.index), "federation": self.config.federation,
            "group": f"fedmq-{self.config.federation}-sum", "max_update_bytes": self.config.max_update_bytes,
            "log_level": self.log_level, "backlog": backlog,
        }  # fmt: skip
        slot.send(("settings", settings))
        assert process.stdout is not None
        try:
            while (message := await read_frame(process.stdout, from_worker=True)) is not None:
                self._on_frame(slot, message)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            code = await process.wait()
            if process.stdin is not None:  # the transport closes once every pipe is: no leak at exit
                process.stdin.close()
            self._lost(slot, code)

    def _lost(self, slot: _Slot, code: int) -> None:
        """Worker ``slot`` is gone: release what it had granted (its sum died with it)."""
        slot.ready.clear()
        for future in (slot.opened, slot.summed):
            if future is not None and not future.done():
                future.set_exception(RoundAbandoned(f"summing worker {slot.index} exited ({code})"))
                future.exception()  # whoever waits sees it; nobody waiting is not an error
        current = self.round
        if self._closing:
            return
        cause = f"signal {-code}" if code < 0 else f"exit code {code}"
        if current is not None and slot.granted:
            lost = frozenset(slot.granted)
            assert current.secure.server is not None
            current.secure.server.release_masked(lost)
            self.lost.append((current.secure.round_id, lost))
            log.warning("summing worker %d ended (%s) in round %d: its %d masked inputs are lost (dropouts)",
                        slot.index, cause, current.secure.round_id, len(lost))  # fmt: skip
        else:
            log.warning("summing worker %d ended (%s); restarting it", slot.index, cause)
        slot.granted.clear()

    def _on_frame(self, slot: _Slot, message: Any) -> None:
        if not isinstance(message, (list, tuple)) or not message:
            log.error("summing worker %d sent a malformed frame", slot.index)
            return
        kind = message[0]
        current = self.round
        if kind == "claim":
            _, round_id, device, payload, refused = message
            ok = False
            if current is not None and not current.closing and round_id == current.secure.round_id:
                server = current.secure.server
                assert server is not None
                # Kept as the in-process path keeps it: a dealer excluded later is subtracted from the sum.
                kept = MaskedInput(current.secure.federation, round_id, device, payload, server.bits,
                                   server.length, refused=list(refused))  # fmt: skip
                ok = server.claim_masked(device, kept)
                if ok:
                    slot.granted.add(device)
                    current.secure.wake()
            slot.send(("grant", round_id, device, ok))
        elif kind == "refusal":
            _, sender, rule, reason, round_id = message
            self.refused(sender, rule, reason, round_id)
        elif kind == "relay":
            self.relay(message[1], message[2])
        elif kind == "opened":
            if slot.opened is not None and not slot.opened.done():
                slot.opened.set_result(message[1])
        elif kind == "sum":
            if slot.summed is not None and not slot.summed.done():
                slot.summed.set_result((message[2], message[3]))
        elif kind == "ready":
            slot.ready.set()
        elif kind == "refused":
            self.error = ConfigError("aggregator.summing_workers", message[1])
            if self._supervisor is not None:  # the aggregator ends with this one line
                self._supervisor.fail("summing workers", self.error)
            for each in self.slots:
                each.ready.set()  # wake ready(): it raises the error

    # -- rounds ----------------------------------------------------------------------------------

    async def open_round(self, secure: SecureRound, devices: Iterable[str]) -> None:
        """Tell every worker the round's U2 keys and shape; RoundAbandoned when none acknowledges."""
        assert secure.server is not None
        server = secure.server
        identities = {d: secure.directory[d] for d in devices}
        opening = ("open", secure.round_id, secure.federation, identities, server.bits, server.length)
        self.round = _Round(secure, opening)
        loop = asyncio.get_running_loop()
        for slot in self.slots:
            slot.granted.clear()
            slot.opened = loop.create_future()
            if not slot.send(opening):
                slot.opened.set_exception(RoundAbandoned(f"summing worker {slot.index} is not running"))
        results = await asyncio.gather(
            *(asyncio.wait_for(asyncio.shield(s.opened), OPEN_TIMEOUT_S) for s in self.slots if s.opened),
            return_exceptions=True,
        )  # fmt: skip
        failed = [s for s, r in zip(self.slots, results) if isinstance(r, BaseException)]
        for slot in failed:  # restart it: a connected worker that does not know the round would drop inputs
            restarted = slot.opened  # a restart sends the open round itself, and acknowledges it again
            if restarted is not None and restarted.done() and restarted.exception() is None:
                continue
            self._kill(slot, f"did not acknowledge round {secure.round_id}")
        if len(failed) == len(self.slots):
            self.round = None
            raise RoundAbandoned(f"round {secure.round_id}: no summing worker acknowledged the round")

    async def collect(self) -> None:
        """Stop granting, add every worker's partial sum to the round's sum; a worker that fails to
        deliver loses its inputs (released: they count as dropouts)."""
        current = self.round
        if current is None:
            return
        current.closing = True
        server = current.secure.server
        assert server is not None
        loop = asyncio.get_running_loop()
        for slot in self.slots:
            slot.summed = loop.create_future()
            if not slot.send(("finish", current.secure.round_id)):
                slot.summed.set_exception(RoundAbandoned(f"summing worker {slot.index} is not running"))
        summed = [s.summed for s in self.slots if s.summed is not None]
        waits = [asyncio.wait_for(asyncio.shield(f), COLLECT_TIMEOUT_S) for f in summed]
        results = await asyncio.gather(*waits, return_exceptions=True)
        for slot, result in zip(self.slots, results):
            granted = frozenset(slot.granted)
            slot.granted.clear()
            if isinstance(result, BaseException):
                if granted:
                    server.release_masked(granted)
                    self.lost.append((current.secure.round_id, granted))
                    log.warning("round=%d summing worker %d gave no sum (%s): its %d inputs are dropouts",
                                current.secure.round_id, slot.index, result or "timeout",
                                len(granted))  # fmt: skip
                self._kill(slot, "gave no partial sum")
                continue
            data, devices = result
            if frozenset(devices) != granted:
                server.release_masked(granted)
                log.error("round=%d summing worker %d summed %d devices but was granted %d: sum dropped",
                          current.secure.round_id, slot.index, len(devices), len(granted))  # fmt: skip
                continue
            if granted:
                server.add_partial_sum(np.frombuffer(data, np.uint32))
                self.summed[slot.index] += len(granted)
        self.round = None

    def _kill(self, slot: _Slot, why: str) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            log.warning("summing worker %d %s: restarting it", slot.index, why)
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop every worker (``stop`` frame, then SIGTERM, then SIGKILL) and their supervisors."""
        self._closing = True
        for slot in self.slots:
            slot.send(("stop",))
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), grace_s)
                except asyncio.TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


__all__ = ["SummingPool", "worker_account", "worker_mqtt"]
