"""A fresh aggregator store meets the broker's retained state of a predecessor: adopt it or supersede it.

Why: an aggregator restarted with an empty store (a lost disk, a new host) and the same key started over
at v0 and round 0, while every device held the predecessor's v17: devices ignored the "older" snapshot
and refused the "replayed" round ids, and every round was abandoned, for ever. Before such a start this
module reads the retained snapshot, announcement and result on the broker:

* signed by *this* aggregator's key and newer than the store: it is our own model. Adopt it: write it
  into the store as the starting snapshot and record its round as closed, so versions and round ids go on
  from where devices are. (Refused with differential privacy on: the accountant's history is gone with
  the store, and restarting it would understate the privacy spent. Restore the store instead.)
* signed by *another* key: a predecessor we cannot speak for. Clear its retained messages (empty retained
  payloads), so no device installs its snapshot or waits on its round; devices provisioned with that key
  then fail their signature checks and stop with exit 8 (re-provision them with this aggregator's key).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import nacl.signing

from aggregator.config import AggregatorConfig
from aggregator.store import Store
from shared.chunking import Reassembler
from shared.errors import FedmqError, IncompatibleError, ProtocolError
from shared.mqtt import MqttConnection
from shared.signing import verify
from shared.topics import Topics
from shared.wire import Message, ModelSnapshot, RoundAnnounce, RoundResult, decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retained:
    """What the broker retained for the federation."""

    snapshot: ModelSnapshot | None
    round_id: int | None  # the highest round id in the retained announcement or result
    topics: tuple[str, ...]  # every topic that held a retained message


async def read_retained(config: AggregatorConfig, settle_s: float = 1.5, timeout: float = 20.0) -> Retained:
    """The retained snapshot (reassembled), the last round id and the retained topics."""
    topics = Topics(config.federation)
    mqtt = replace(config.mqtt, client_id=f"{config.mqtt.client_id}-takeover"[:64], session_expiry_s=0)
    reassembler = Reassembler(max_total=64 * 1024 * 1024)
    snapshot: ModelSnapshot | None = None
    round_id: int | None = None
    seen: set[str] = set()
    wanted = [topics.model_all, topics.round_all, topics.result, topics.delta_all, topics.enrolment]
    async with MqttConnection(mqtt, wanted) as conn:
        await conn.wait_connected(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await conn.next_message(timeout=settle_s)
            if msg is None:
                break
            topic = str(msg.topic)
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
            if not payload:
                continue
            seen.add(topic)
            try:
                if topic == topics.round or topic == topics.result:
                    decoded: Message = decode(payload, (RoundAnnounce, RoundResult))
                    rid = decoded.round_id  # type: ignore[attr-defined]
                    round_id = rid if round_id is None else max(round_id, rid)
                elif topic.startswith(topics.model):
                    index = topics.parse_model_chunk(topic)
                    whole = reassembler.feed("model", index, payload, 64 * 1024 * 1024)
                    if isinstance(whole, ModelSnapshot):
                        snapshot = whole
            except FedmqError as exc:
                log.warning("retained %s unreadable: %s", topic, exc)
    return Retained(snapshot, round_id, tuple(sorted(seen)))


async def clear_retained(config: AggregatorConfig, retained: Retained) -> None:
    """Publish an empty retained payload on every topic that held one (MQTT's "delete retained")."""
    mqtt = replace(config.mqtt, client_id=f"{config.mqtt.client_id}-takeover"[:64], session_expiry_s=0)
    topics = Topics(config.federation)
    async with MqttConnection(mqtt) as conn:
        await conn.wait_connected()
        for topic in retained.topics:
            if topic != topics.enrolment:  # signed by the authority, not by an aggregator: still valid
                await conn.publish(topic, b"", retain=True)


async def supersede_predecessor(config: AggregatorConfig, verify_key: bytes, timeout: float = 20.0) -> str:
    """Run before an aggregator starts on ``config.store_dir``; returns what was done (for the log).

    Raises MqttTimeout when the broker does not answer within ``timeout`` seconds."""
    store = Store(config.store_dir)
    try:
        if store.latest_snapshot() is not None:
            return "store has a snapshot: nothing to take over"
    finally:
        store.close()
    retained = await read_retained(config, timeout=timeout)
    snapshot = retained.snapshot
    if snapshot is None:
        return "no retained snapshot on the broker"
    try:
        verify(snapshot, nacl.signing.VerifyKey(verify_key))
        ours = True
    except ProtocolError:
        ours = False
    if not ours:
        await clear_retained(config, retained)
        log.warning("cleared %d retained messages of another aggregator key (its snapshot v%d)",
                    len(retained.topics), snapshot.version)  # fmt: skip
        return "superseded another aggregator's retained state"
    if snapshot.federation != config.federation:
        raise IncompatibleError(f"retained snapshot is of federation {snapshot.federation!r}")
    if config.dp.enabled:
        raise IncompatibleError(
            f"the broker holds this aggregator's v{snapshot.version} but the store is empty, and with "
            "differential privacy the spent budget cannot be recovered from the broker: restore the store"
        )
    round_id = max(snapshot.round_id, retained.round_id if retained.round_id is not None else -1, 0)
    store = Store(config.store_dir)
    try:
        store.write_snapshot(snapshot.version, snapshot.round_id, encode(snapshot), {})
        now = time.time()
        store.open_round(round_id, snapshot.version, now, now)
        store.finish_round(round_id, "closed", 0, "adopted from the broker's retained state")
    finally:
        store.close()
    log.warning("store was empty: adopted this aggregator's retained snapshot v%d; next round %d",
                snapshot.version, round_id + 1)  # fmt: skip
    return f"adopted v{snapshot.version}"


