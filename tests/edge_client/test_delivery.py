"""The device's outbox: a contribution is kept until the aggregator moves past its phase, and re-sent on
the phase's repeated opening message, even when its first send failed or was stranded."""

from __future__ import annotations

import asyncio

from edge_client.delivery import Deliveries, phase_opened_by
from shared.errors import FedmqError
from shared.topics import KEYS, MASKED, SHARES, UNMASK, UPDATE


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
