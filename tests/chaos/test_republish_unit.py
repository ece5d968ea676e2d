"""The aggregator's open-phase record and the shipped-config broker, without a broker running."""

from __future__ import annotations

import asyncio

from aggregator import intake
from aggregator.republish import OpenPhase, RecordingOutbox
from shared.topics import Topics
from simulator.chaos import ShippedMosquitto, check_versions, shipped_persistence


def recorder(sent: list[str]):
    """Steps for an OpenPhase that note their label in ``sent`` when they run (instead of publishing)."""

    def step(label: str):
        async def go() -> None:
            sent.append(label)

        return go

    return step


async def test_open_phase_replays_latest_per_key_in_first_published_order():
    sent: list[str] = []
    phase = OpenPhase()
    step = recorder(sent)

    await phase.publish("roster", step("roster"))
    await phase.publish("inbox/a", step("inbox a"))
    await phase.publish("notice", step("U2"))
    await phase.publish("notice", step("U3"))  # replaces U2, keeps its place after the inboxes
    sent.clear()
    assert await phase.replay() == 3
    assert sent == ["roster", "inbox a", "U3"]
    phase.clear()
    assert await phase.replay() == 0 and phase.replays == 1


async def test_a_device_back_online_gets_only_its_own_inbox_messages_again():
    """A broker restart lost the session of a device that re-subscribed after its inbox went out: the
    aggregator re-publishes that device's batch and neighbour keys, not the broadcast roster or notice
    (and not another device's inbox, nor that of a device whose name merely ends the same)."""
    sent: list[str] = []
    phase = OpenPhase()
    step = recorder(sent)

    for key in ["roster", "neighbours/dev-1", "neighbours/dev-11", "inbox/dev-1", "inbox/dev-11", "notice"]:
        await phase.publish(key, step(key))
    sent.clear()
    await phase.replay_for("dev-1")
    assert sent == ["neighbours/dev-1", "inbox/dev-1"]
    sent.clear()
    await phase.replay_for("dev-9")  # nothing of this phase was addressed to it
    assert sent == [] and phase.replays == 0  # and a device's replay is not a reconnect's


async def test_a_device_online_in_a_loop_gets_its_inbox_again_at_most_every_replay_spacing(monkeypatch):
    """Presence is not rate-limited like round messages: a device announcing itself online over and over
    must not make the aggregator re-publish its share batch each time."""
    sent: list[str] = []
    now = [1000.0]
    monkeypatch.setattr(intake.time, "monotonic", lambda: now[0])
    handler = intake.Intake.__new__(intake.Intake)  # the mixin's state, without a whole aggregator
    handler._outbox = RecordingOutbox(None, Topics("t"), chunk_limit=1024)  # type: ignore[arg-type]

    async def batch() -> None:
        sent.append("inbox/dev-1")

    await handler._outbox.open_phase.publish("inbox/dev-1", batch)
    sent.clear()

    async def online_times(count: int) -> None:
        for _ in range(count):
            handler._replay_inbox("dev-1")
            await asyncio.sleep(0)
        await asyncio.gather(*handler.background_tasks)

    await online_times(50)
    assert sent == ["inbox/dev-1"]
    now[0] += intake.REPLAY_SPACING_S * 0.9
    await online_times(5)
    assert len(sent) == 1
    now[0] += intake.REPLAY_SPACING_S * 0.2  # past the spacing since the first: a real reconnect again
    await online_times(5)
    assert sent == ["inbox/dev-1"] * 2


def test_shipped_broker_renders_the_shipped_persistence_lines(tmp_path):
    broker = ShippedMosquitto(tmp_path / "b")
    text = broker.render().read_text()
    settings = shipped_persistence()
    for key, value in settings.items():
        assert f"\n{key} {value}\n" in f"\n{text}"
    assert "autosave_interval 1\n" not in text  # the test template's 1 s save is gone


def test_version_check():
    assert check_versions([0, 1, 2]) == []
    assert check_versions([0, 1, 1]) and check_versions([0, 2])
