"""Who broke which rule, counted per sender, logged at most once per sender and rule per interval.

A compromised or buggy device can send thousands of bad messages a second. Logging each one (the
previous behaviour) lets one device fill the disk and bury everybody else's lines, and a list entry per
message grows memory without bound. :class:`Offences` keeps one counter per (sender, rule) and writes
one WARNING line per (sender, rule) per ``interval_s``, with the number of offences that line stands for;
the counters are what metrics and tests read. The number of distinct senders kept is capped too (a topic
can carry any sender name): beyond ``max_senders`` new senders are counted under :data:`OTHER`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.quarantine import Quarantine

log = logging.getLogger(__name__)

#: The sender name offences are counted under once ``max_senders`` distinct senders are known.
OTHER = "<other senders>"


@dataclass
class _Line:
    last_logged: float
    suppressed: int = 0


class Offences:
    """Per-(sender, rule) counters with rate-limited logging (see the module docstring)."""

    def __init__(
        self,
        *,
        interval_s: float = 60.0,
        max_senders: int = 10_000,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.max_senders = max_senders
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._senders: set[str] = set()
        self._lines: dict[tuple[str, str], _Line] = {}
        self._log = logger or log
        self._clock = clock
        self.lines_logged = 0
        #: Who sits out rounds for which rules (``shared.quarantine``); every offence is reported to it.
        self.quarantine = quarantine if quarantine is not None else Quarantine()

    def record(
        self,
        sender: str,
        rule: str,
        detail: str,
        *,
        context: str = "",
        exc_info: BaseException | None = None,
    ) -> bool:
        """Count one offence; log it unless this (sender, rule) was logged within the interval.

        Returns whether a line was written. ``context`` (round, topic...) goes into the line as is;
        ``exc_info`` (an unanticipated exception) adds its traceback to the line.
        """
        if sender not in self._senders:
            if len(self._senders) >= self.max_senders:
                sender = OTHER
            else:
                self._senders.add(sender)
        key = (sender, rule)
        self.counts[key] += 1
        if sender != OTHER:
            self.quarantine.offence(sender, rule)
        now = self._clock()
        line = self._lines.get(key)
        if line is not None and now - line.last_logged < self.interval_s:
            line.suppressed += 1
            return False
        more = f" (+{line.suppressed} more since the last line)" if line and line.suppressed else ""
        self._lines[key] = _Line(now)
        self.lines_logged += 1
        self._log.warning(
            "offence from=%s rule=%s %s%s: %s",
            sender,
            rule,
            context,
            more,
            detail,
            exc_info=exc_info,
            extra={"device": sender, "rule": rule},
        )
        return True

    def by_sender(self) -> dict[str, dict[str, int]]:
        """``{sender: {rule: count}}`` for metrics and reports."""
        out: dict[str, dict[str, int]] = {}
        for (sender, rule), count in sorted(self.counts.items()):
            out.setdefault(sender, {})[rule] = count
        return out

    def senders(self, rules: str | frozenset[str] | set[str] | None = None) -> set[str]:
        """Senders with at least one offence (of ``rules``: one rule or a set of them, when given)."""
        wanted = {rules} if isinstance(rules, str) else rules
        return {s for (s, r) in self.counts if wanted is None or r in wanted}

    @property
    def total(self) -> int:
        return sum(self.counts.values())
