"""Ends a device that cannot take part in the federation it reached, instead of letting it idle forever.

Why: a model of another shape, an aggregator key that does not match, or a bundle of another instance
of the federation each logged a clear warning per message but the device ran on, doing nothing, for as
long as anyone let it. The per-message fault boundary still drops such messages (one bad message never
stops a device); this watchdog reads what it dropped and decides when the cause is permanent:

* a snapshot *signed by the aggregator* whose layout is not the local model's (``IncompatibleError``),
  or an enrolment list of another federation instance (``FederationMismatch``): at once;
* a device that has never verified anything, while snapshots or rounds keep failing their signature
  check for ``key_grace_s``: the configured aggregator key is not this aggregator's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.errors import IncompatibleError

#: Rules (error class names) that mean "this device can never take part as configured".
PERMANENT_RULES = frozenset({"IncompatibleError", "FederationMismatch"})


class CompatibilityWatchdog:
    """``cause = await watchdog.run()`` returns once the device is found incompatible."""

    def __init__(self, device: Any, *, key_grace_s: float = 15.0, poll_s: float = 0.5) -> None:
        self.device = device
        self.key_grace_s = key_grace_s
        self.poll_s = poll_s
        self._seen = 0
        self._first_bad_signature: float | None = None

    def check(self) -> IncompatibleError | None:
        faults = self.device.stats.faults
        fresh = faults.total - self._seen
        self._seen = faults.total
        recent = list(faults.recent)[-fresh:] if fresh > 0 else []
        for rejection in recent:
            if rejection.rule in PERMANENT_RULES:
                return IncompatibleError(rejection.detail)
            if "signature" in rejection.detail and self._first_bad_signature is None:
                self._first_bad_signature = time.monotonic()
        if self.device.version >= 0:
            self._first_bad_signature = None  # something verified: the key is right
        elif (
            self._first_bad_signature is not None
            and time.monotonic() - self._first_bad_signature >= self.key_grace_s
        ):
            return IncompatibleError(
                "no snapshot or round verifies with the configured aggregator key "
                f"(for {self.key_grace_s:.0f}s): device.aggregator_key is not this federation's aggregator"
            )
        return None

    async def run(self) -> IncompatibleError:
        while True:
            cause = self.check()
            if cause is not None:
                return cause
            await asyncio.sleep(self.poll_s)
