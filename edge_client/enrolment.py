"""A device's side of live enrolment: follow the signed enrolled set on ``fl/<fed>/enrolment``.

The device trusts the federation's enrolment authority key (from its provisioning bundle), not a static
list: each retained list it receives is verified and applied to its :class:`LiveDirectory`, which the
SecAgg client consults for every roster. New devices are added at once; revoked ones are forgotten only
after ``removal_grace_s`` (the aggregator drops them at once), so a roster built just before a
revocation is not refused (see ``shared/enrolment.py``). A device that finds itself revoked calls
``on_revoked`` (the CLI stops with exit code 9).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shared.enrolment import EnrolmentFollower, EnrolmentList, LiveDirectory, verify_list
from shared.errors import FedmqError
from shared.supervision import INTERNAL_ERROR, rule_of
from shared.topics import Topics

log = logging.getLogger(__name__)


class DeviceRevoked(FedmqError):
    """This device's enrolment was revoked: it may no longer take part."""


class DeviceEnrolment:
    """Verifies and applies enrolment lists for device ``device``."""

    def __init__(
        self,
        device: str,
        federation: str,
        authority_key: bytes,
        initial: EnrolmentList,
        *,
        removal_grace_s: float = 10.0,
        on_revoked: Callable[[DeviceRevoked], None] | None = None,
    ) -> None:
        verify_list(initial, authority_key, federation)
        self.device = device
        self.topic = Topics(federation).enrolment
        self.directory = LiveDirectory(initial.directory(), serial=initial.serial)
        self.on_revoked = on_revoked
        self.revoked: DeviceRevoked | None = None
        self.follower = EnrolmentFollower(
            self.directory, authority_key, federation, epoch=initial.epoch, delay_removals=removal_grace_s,
            on_change=self._check_self,
        )  # fmt: skip
        self.follower.current = initial
        if device not in self.directory:
            raise FedmqError(f"{device!r} is not in its own enrolment list (serial {initial.serial})")

    def handle(self, payload: bytes) -> None:
        """One retained list; raises EnrolmentError/WireError for one that must be refused."""
        self.follower.offer(payload)

    def _check_self(self, msg: EnrolmentList) -> None:
        if self.device in msg.directory() or self.revoked is not None:
            return
        self.revoked = DeviceRevoked(f"device {self.device!r} was revoked (enrolment serial {msg.serial})")
        log.error("%s", self.revoked)
        if self.on_revoked is not None:
            self.on_revoked(self.revoked)

    def close(self) -> None:
        self.follower.close()


def attach(device: Any, enrolment: DeviceEnrolment) -> None:
    """Route ``enrolment.topic`` on ``device`` (an :class:`~edge_client.client.EdgeClient`) to
    ``enrolment``, with the device's own fault boundary: a refused list is counted in
    ``device.stats.faults`` by rule and logged, never raised. Subscribe to the topic before ``run()``.

    Why a wrapper: the enrolment list is optional for a device (the protocol's §2.5), so the client's
    message dispatch stays as it is and a device without live enrolment carries none of it.
    """
    handle = device.handle

    def handle_with_enrolment(topic: str, payload: bytes) -> None:
        if topic != enrolment.topic or not payload:
            handle(topic, payload)
            return
        try:
            enrolment.handle(payload)
        except Exception as exc:  # the per-message fault boundary, as in EdgeClient.handle
            rule = rule_of(exc)
            device.stats.faults.record("", topic, rule, str(exc))
            log.warning("device=%s dropped message topic=%s rule=%s: %s", enrolment.device, topic, rule, exc,
                        exc_info=exc if rule == INTERNAL_ERROR else None)  # fmt: skip

    device.handle = handle_with_enrolment
