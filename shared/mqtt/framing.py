"""Chunked publication over a connection: :func:`publish_framed` splits a payload into frames that fit
the broker (``shared/chunking.py``) and publishes them. Product code publishes through
:class:`shared.outbox.Outbox`; this is the same rule for tools and light clients."""

from __future__ import annotations

from collections.abc import Callable

from shared.chunking import split
from shared.mqtt.connection import MqttConnection


async def publish_framed(
    conn: MqttConnection,
    topic: str,
    chunk_topic: Callable[[int], str],
    payload: bytes,
    limit: int,
    *,
    retain: bool = False,
    expiry_s: float | None = None,
) -> int:
    """Publish ``payload`` whole or, above ``limit``, as chunks then manifest; returns the frame count.

    ``limit`` is lowered to the broker's maximum packet size when that is smaller. Chunks go first so
    that a subscriber that sees the manifest finds its chunks already retained.
    """
    frames = split(payload, conn.frame_limit(topic, limit))
    for frame in frames[1:] + frames[:1]:
        target = topic if frame.chunk is None else chunk_topic(frame.chunk)
        await conn.publish(target, frame.payload, retain=retain, expiry_s=expiry_s)
    return len(frames)
