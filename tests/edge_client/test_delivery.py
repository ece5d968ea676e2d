"""The device's outbox: a contribution is kept until the aggregator moves past its phase, and re-sent on
the phase's repeated opening message, even when its first send failed or was stranded."""

from __future__ import annotations

import asyncio

from edge_client.delivery import SEEDS, Deliveries, DeliveringOutbox, cue_of, ledger_kind, phase_opened_by
from shared.errors import FedmqError
from shared.topics import KEYS, MASKED, SHARES, UNMASK, UPDATE, Topics
from shared.wire import RoundAnnounce, encode
from shared.wire.secagg import SurvivorList, UnmaskReveal
from shared.wire.seeds import SeedRequest, SeedReveal

TOPICS = Topics("f")


class Link:
    """A fake transmit path that records sends and can fail or hang on demand."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    def transmit(self, label: str, size: int = 100):
        async def go(published) -> None:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise FedmqError("link down")
            self.sent.append(label)
            published(size)

        return go


async def test_failed_send_is_kept_and_goes_out_on_the_next_cue():
    box, link = Deliveries("dev-1"), Link()
    link.fail = True
    assert await box.deliver(3, MASKED, 100, link.transmit("masked")) is False
    assert box.outstanding() == [(3, MASKED)] and box.stats.failed == 1
    link.fail = False
    entry = box.opened(3, MASKED)  # the U2 notice arrives again
    assert entry is not None and await box.resend(entry)
    assert link.sent == ["masked"] and box.stats.resent == 1 and box.stats.bytes_resent == 100
    assert box.outstanding() == [(3, MASKED)]  # still unconfirmed until U3


async def test_next_phase_confirms_listed_and_expires_unlisted():
    box, link = Deliveries("dev-1"), Link()
    await box.deliver(1, KEYS, 10, link.transmit("keys"))
    assert box.opened(1, SHARES, members=["dev-1", "dev-2"]) is None  # roster lists us: keys confirmed
    assert box.stats.confirmed == 1 and len(box) == 0
    await box.deliver(1, SHARES, 10, link.transmit("shares"))
    box.opened(1, MASKED, members=["dev-2"])  # U2 without us: the share phase closed without us
    assert box.stats.expired == 1 and len(box) == 0


async def test_round_end_settles_everything_of_that_round_only():
    box, link = Deliveries("dev-1"), Link()
    await box.deliver(1, UNMASK, 10, link.transmit("reveal"))
    await box.deliver(2, KEYS, 10, link.transmit("keys"))
    box.round_ended(1)
    assert box.outstanding() == [(2, KEYS)]


async def test_cue_during_a_stranded_send_sends_again_when_it_ends():
    box, link = Deliveries("dev-1"), Link()
    link.gate = asyncio.Event()
    first = asyncio.create_task(box.deliver(5, UPDATE, 10, link.transmit("update")))
    await asyncio.sleep(0)
    assert box.opened(5, UPDATE) is None  # being sent: not twice at once...
    link.gate.set()
    assert await first
    assert link.sent == ["update", "update"]  # ...but once more after the stranded one ended
    assert box.stats.resent == 1


async def test_resend_of_a_settled_entry_is_a_no_op():
    box, link = Deliveries("dev-1"), Link()
    await box.deliver(1, MASKED, 10, link.transmit("masked"))
    entry = box.opened(1, MASKED)
    box.opened(1, UNMASK)  # U3 arrived first
    assert entry is not None and not await box.resend(entry)
    assert link.sent == ["masked"]


def test_phase_mapping():
    assert phase_opened_by("round", secure=True) == KEYS
    assert phase_opened_by("round", secure=False) == UPDATE
    assert phase_opened_by("roster", secure=True) == SHARES
    assert phase_opened_by("notice", secure=True, notice_phase="shared") == MASKED
    assert phase_opened_by("notice", secure=True, notice_phase="masked") == UNMASK
    assert phase_opened_by("notice", secure=True, notice_phase="bogus") is None
    assert phase_opened_by("seed_request", secure=True) == SEEDS
    assert phase_opened_by("seed_request", secure=False) is None


class Wire:
    """The broker as a list of (topic, payload); ``down`` makes every publish fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.down = False

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False, expiry_s=None) -> None:
        if self.down:
            raise FedmqError("link down")
        self.sent.append((topic, payload))


def _announce(round_id: int) -> bytes:
    announce = RoundAnnounce(
        federation="f",
        round_id=round_id,
        base_version=0,
        phase="keys",
        opened_at=0.0,
        deadline=60.0,
        min_clients=2,
        target_clients=2,
    )
    return encode(announce)


REVEAL = UnmaskReveal("f", 4, "dev-1", {"dev-2": b"\x01" * 33})
SEED_REVEAL = SeedReveal("f", 4, "dev-1", {"dev-3": b"\x02" * 32})
REQUEST = encode(SeedRequest("f", 4, ["dev-3"]))


def test_a_seed_reveal_has_a_ledger_kind_of_its_own():
    assert ledger_kind(UNMASK, SEED_REVEAL) == SEEDS
    assert ledger_kind(UNMASK, REVEAL) == UNMASK


def test_a_seed_request_cues_the_seed_reveal_and_lists_no_one():
    assert cue_of(TOPICS, TOPICS.notice, REQUEST, secure=True) == (SEEDS, 4, None)
    assert cue_of(TOPICS, TOPICS.notice, REQUEST, secure=False) is None
    u3 = encode(SurvivorList("f", 4, "masked", ["dev-1"]))
    assert cue_of(TOPICS, TOPICS.notice, u3, secure=True) == (UNMASK, 4, ["dev-1"])
    assert cue_of(TOPICS, TOPICS.notice, b"\xc1 not msgpack", secure=True) is None


async def test_the_seed_reveal_rides_the_unmask_topic_beside_the_unmask_reveal():
    wire = Wire()
    outbox = DeliveringOutbox(wire, TOPICS, "dev-1", chunk_limit=4096)
    await outbox.round_message(4, UNMASK, "dev-1", REVEAL, expiry_s=30)
    await outbox.round_message(4, UNMASK, "dev-1", SEED_REVEAL, expiry_s=30)
    topic = TOPICS.round_msg(4, UNMASK, "dev-1")
    assert [t for t, _ in wire.sent] == [topic, topic]  # the wire is as before: both on the unmask topic
    assert outbox.deliveries.outstanding() == [(4, SEEDS), (4, UNMASK)]  # neither replaced the other


async def test_a_repeated_seed_request_re_sends_only_the_seed_reveal_until_the_next_round():
    wire = Wire()
    outbox = DeliveringOutbox(wire, TOPICS, "dev-1", chunk_limit=4096)
    await outbox.round_message(4, UNMASK, "dev-1", REVEAL, expiry_s=30)
    wire.down = True  # the seed reveal's publish fails (a long outage): kept, not raised
    await outbox.round_message(4, UNMASK, "dev-1", SEED_REVEAL, expiry_s=30)
    assert outbox.deliveries.stats.failed == 1 and len(wire.sent) == 1
    wire.down = False
    resend = outbox.cue(TOPICS.notice, REQUEST, secure=True)  # the request arrives again
    assert resend is not None
    await resend
    assert wire.sent[-1] == (TOPICS.round_msg(4, UNMASK, "dev-1"), encode(SEED_REVEAL))
    stats = outbox.deliveries.stats
    assert stats.resent == 1 and stats.by_kind == {SEEDS: 1}  # the unmask reveal was not re-sent
    assert outbox.deliveries.outstanding() == [(4, SEEDS), (4, UNMASK)]  # the request confirms nothing
    assert outbox.cue(TOPICS.notice, encode(SeedRequest("f", 3, ["dev-3"])), secure=True) is None  # old round
    assert outbox.cue(TOPICS.round, _announce(5), secure=True) is None  # the next round...
    assert outbox.deliveries.outstanding() == [] and stats.confirmed == 2  # ...confirms both
