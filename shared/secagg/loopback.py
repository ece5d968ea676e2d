"""A whole SecAgg+ round in memory, up to the end of the share phase: real keys, shares, sealed boxes.

Benchmarks and tests that need real protocol messages without a broker (message sizes, masking cost,
the modular sum) start here instead of each wiring :class:`SecAggClient` and :class:`SecAggServer`
together by hand. Every message a device sends is passed to ``record`` (phase name, message) before
the server sees it, so a caller can count bytes exactly as they would travel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import nacl.signing

from shared.codec import unpack
from shared.secagg.client import SecAggClient
from shared.secagg.keys import generate_identity
from shared.secagg.server import SecAggServer
from shared.wire import Message
from shared.wire.secagg import Roster, ShareBatch, SurvivorList

#: Called with (phase, message) for each message a device sends; may return a re-decoded copy.
Recorder = Callable[[str, Message], Message | None]


@dataclass
class SharedRound:
    """A round taken through the share phase: every device holds its neighbours' shares."""

    bits: int
    length: int
    clients: dict[str, SecAggClient]
    server: SecAggServer
    roster: Roster
    shared: SurvivorList
    #: Mean seconds one device spent answering the roster (key agreement, Shamir, sealing).
    share_phase_s: float


def share_phase(
    n: int,
    *,
    bits: int,
    length: int,
    federation: str = "loopback",
    round_id: int = 0,
    record: Recorder | None = None,
) -> SharedRound:
    """Advertise keys, build the roster, exchange sealed shares, close the share phase (``n`` devices)."""
    aggregator = generate_identity()
    identities: dict[str, nacl.signing.SigningKey] = {f"dev-{i:03d}": generate_identity() for i in range(n)}
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    clients = {
        d: SecAggClient(federation, d, k, bytes(aggregator.verify_key), directory)
        for d, k in identities.items()
    }
    server = SecAggServer(
        federation,
        round_id,
        aggregator,
        directory,
        bits,
        length,
        unpack=lambda m: unpack(m.payload, bits, length),
    )

    def sent(phase: str, message: Message) -> Message:
        copy = record(phase, message) if record is not None else None
        return copy if copy is not None else message

    for client in clients.values():
        advert = sent("advertise", client.advertise(round_id))
        server.add_advert(advert)  # type: ignore[arg-type]
    roster = server.make_roster()
    on_roster_s = 0.0
    for device, client in clients.items():
        start = time.perf_counter()
        bundles = client.on_roster(roster)
        on_roster_s += time.perf_counter() - start
        batch = sent("shares", ShareBatch.outgoing(federation, round_id, device, bundles))
        assert isinstance(batch, ShareBatch)
        for bundle in batch.sent_bundles():
            server.add_shares(bundle)
    shared = server.close_share_phase()
    for device, client in clients.items():
        for bundle in server.shares_for(device):
            client.on_shares(bundle)
    return SharedRound(bits, length, clients, server, roster, shared, on_roster_s / n)
