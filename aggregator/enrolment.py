"""The aggregator's side of live enrolment: watch the signed enrolled set, publish it, follow it.

``fedmq enroll``/``revoke`` rewrite the list file (signed by the enrolment authority, which the
aggregator never holds). This task notices the new file, verifies it, publishes it retained on
``fl/<fed>/enrolment`` for the devices, and applies it to the aggregator's :class:`LiveDirectory`:
revocations at once, additions only after ``addition_grace_s``, so that devices (which add at once)
already know a new device before any roster names it (see ``shared/enrolment.py``).

It uses a connection of its own (client id ``<aggregator>-enrolment``, the aggregator's account), so the
round engine needs no change to host it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path

from shared.enrolment import EnrolmentFollower, EnrolmentList, LiveDirectory, read_list_file, verify_list
from shared.errors import FedmqError
from shared.mqtt import MqttConfig, MqttConnection
from shared.topics import Topics
from shared.wire import encode

log = logging.getLogger(__name__)


def load_directory(path: Path, authority_key: bytes, federation: str) -> tuple[LiveDirectory, EnrolmentList]:
    """The directory of the list at ``path`` (verified), for the aggregator's start."""
    msg = verify_list(read_list_file(path), authority_key, federation)
    return LiveDirectory(msg.directory(), serial=msg.serial), msg


class EnrolmentPublisher:
    """``await publisher.run(stop)``: keep ``fl/<fed>/enrolment`` and the live directory current."""

    def __init__(
        self,
        mqtt: MqttConfig,
        federation: str,
        path: Path,
        authority_key: bytes,
        directory: LiveDirectory,
        current: EnrolmentList,
        *,
        addition_grace_s: float = 3.0,
        poll_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.topic = Topics(federation).enrolment
        self.poll_s = poll_s
        self.follower = EnrolmentFollower(
            directory, authority_key, federation, epoch=current.epoch, delay_additions=addition_grace_s
        )
        self.follower.current = current
        self._payload = encode(current)
        self._stamp = self._file_stamp()
        client_id = f"{mqtt.client_id}-enrolment"[:64]
        self.conn = MqttConnection(replace(mqtt, client_id=client_id), on_connect=[self._publish])

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    async def _publish(self) -> None:
        try:
            await self.conn.publish(self.topic, self._payload, retain=True)
            serial = self.follower.current.serial if self.follower.current is not None else None
            log.info("published enrolment list serial %s", serial)
        except FedmqError as exc:
            log.error("publishing the enrolment list failed: %s", exc)

    def check(self) -> bool:
        """Read the file if it changed; True when a newer list was accepted (then publish it)."""
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            accepted = self.follower.offer(read_list_file(self.path))
        except FedmqError as exc:
            log.error("refused enrolment list %s: %s", self.path, exc)
            return False
        if accepted is None:
            return False
        self._payload = encode(accepted)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        async with self.conn:
            while not stop.is_set():
                if self.check():
                    await self._publish()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
        self.follower.close()
