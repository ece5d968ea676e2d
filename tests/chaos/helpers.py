"""What the chaos tests share: a secure federation on a broker, a per-round invariant check, fault timing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient
from edge_client.secure import SecureParticipation
from shared.codec import CodecConfig
from shared.mqtt import MqttConfig
from shared.snapshots import make_snapshot
from simulator.broker import MosquittoBroker
from simulator.chaos import check_versions, exact_sum
from simulator.harness import running
from tests.support import directory_of, initial_weights, secure_devices

FED = "chaos"


def secure_values(n: int, **kw: object) -> dict[str, object]:
    """Aggregator settings for ``n`` devices with generous windows (a loaded 2-core machine)."""
    values: dict[str, object] = {
        "codec": CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        "windows": PhaseWindows(keys=15, shares=15, masked=30, unmask=15),
        "min_clients": max(2, n - 2),
        "target_clients": n,
        "over_selection": 1.0,
        "snapshot_encoding": "f32",
    }
    values.update(kw)
    return values


@dataclass
class Ledger:
    """Per round: who the aggregator summed, and whether the unmasked sum equals the oracle's."""

    rounds: list[tuple[int, str, int]] = field(default_factory=list)  # (round, status, contributors)
    exact: list[bool] = field(default_factory=list)
    summed: list[frozenset[str]] = field(default_factory=list)
    #: Participations of devices that crashed (a crash forgets its own), kept by the test for the oracle.
    crashed: dict[str, SecureParticipation] = field(default_factory=dict)

    def record(self, agg: Aggregator, devices: list[EdgeClient]) -> None:
        result = agg.results[-1]
        self.rounds.append((result.round_id, result.status, result.contributors))
        secure = agg.last_secure
        if result.status != "closed" or secure is None or secure.server is None or secure.total is None:
            return
        members = secure.server.masked
        self.summed.append(members)
        parts = {d.client_id: d.secure_round or self.crashed.get(d.client_id) for d in devices}
        encodings = [
            part.encoded
            for cid, part in parts.items()
            if cid in members and part is not None and part.round_id == result.round_id
        ]
        ok = len(encodings) == len(members) and bool(
            np.array_equal(secure.total, exact_sum(encodings, secure.config.bits))
        )
        self.exact.append(ok)


async def run_secure(
    agg: Aggregator,
    devices: list[EdgeClient],
    rounds: int,
    *,
    fault: Callable[[int], Awaitable[None]] | None = None,
    timeout: float = 240,
    ledger: Ledger | None = None,
) -> Ledger:
    """Run ``rounds`` secure rounds with every device online; ``fault(round_id)`` runs alongside each
    round (it may kill the broker, drop links...). Returns the ledger of every round."""
    ledger = ledger or Ledger()

    async def all_rounds() -> None:
        for index in range(rounds):
            chaos = asyncio.create_task(fault(index)) if fault is not None else None
            try:
                ran = await agg.run(1)
            finally:
                if chaos is not None:
                    chaos.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await chaos
            assert ran, "the aggregator stopped"
            ledger.record(agg, devices)

    async with running(devices):
        await asyncio.wait_for(all_rounds(), timeout)
    return ledger


def versions_ok(agg: Aggregator) -> list[str]:
    assert agg.store is not None
    return check_versions(agg.store.versions())


class BrokerKiller:
    """SIGKILLs the broker the moment the first device finishes sending a message of ``phase`` in a round,
    while the others' are still on their way (a device's ``phase_hook`` runs right after its PUBACK).

    ``await killer.fault(index)`` arms it for one round, waits for the kill, then restarts the broker.
    """

    def __init__(self, broker: MosquittoBroker, devices: list[EdgeClient], phase: str) -> None:
        self.broker = broker
        self.phase = phase
        self.kills: list[int] = []
        self._armed = False
        self._killed = asyncio.Event()
        self._round = -1
        for device in devices:
            device.phase_hook = self._hook

    def _hook(self, phase: str) -> None:
        if self._armed and phase == self.phase:
            self._armed = False
            self.broker.kill()  # synchronous: the other devices' messages are still in flight
            self.kills.append(self._round)
            self._killed.set()

    async def fault(self, index: int, down_s: float = 0.3) -> None:
        self._round = index
        self._killed.clear()
        self._armed = True
        try:
            await self._killed.wait()
        finally:
            self._armed = False
        await asyncio.sleep(down_s)
        self.broker.start()


def link_config(url: str, client_id: str, **overrides: object) -> MqttConfig:
    """Test MQTT settings (fast reconnects, short deadlines) for a connection to ``url``."""
    values: dict[str, object] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "connect_timeout_s": 5.0}
    values.update(overrides)
    return MqttConfig.from_url(url, client_id=client_id, **values)


def devices_for(url_of: Callable[[str], str], broker: MosquittoBroker, digits, keys, agg, **mqtt_kw):
    """Secure devices whose MQTT connection goes to ``url_of(cid)`` (a fault proxy, or the broker)."""
    return secure_devices(
        broker, digits, keys, agg.verify_key, FED, mqtt=lambda cid: link_config(url_of(cid), cid, **mqtt_kw)
    )


def make_aggregator(tmp_path: Path, keys, values: dict, url: str) -> Aggregator:
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=link_config(url, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory_of(keys),
        **values,
    )
    return Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights))
