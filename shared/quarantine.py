"""Quarantine: a device named for a rule that warrants it sits out rounds, for a while, longer each time.

Before, a device named once (a weak key, a corrupt reveal...) was out for the aggregator's lifetime: a
device with a since-fixed bug, or one framed by a transient fault, could never come back without a
restart. The policy now:

* an offence under a quarantining rule quarantines its sender for ``rounds`` rounds **and** at least
  ``seconds`` seconds (both must pass; 0 disables either), counted from the round it was named in;
* each repeat offence multiplies both by ``escalation`` (the n-th offence: ``rounds * escalation^(n-1)``),
  and from ``permanent_after`` offences on (0: never) the quarantine does not expire;
* an operator lifts it early with ``fedmq quarantine lift DEVICE`` (a request file the aggregator
  reads at the next round, :func:`read_lift_requests`); the offence count stays, so a device that
  offends again escalates from where it was;
* the state is written to ``<store>/quarantine.json`` (:meth:`Quarantine.save`) for ``fedmq quarantine``
  and restored after a restart, so a restart is no longer a way out.

Pure bookkeeping: the caller gives the round and the time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.errors import ConfigError

log = logging.getLogger(__name__)

#: Where the aggregator keeps the quarantine state, and where lift requests are dropped, in its store.
STATE_FILE = "quarantine.json"
LIFT_DIR = "quarantine-lift"


@dataclass(frozen=True)
class QuarantinePolicy:
    """How long a quarantine lasts (see the module docstring)."""

    rounds: int = 100
    seconds: float = 0.0
    escalation: float = 4.0
    permanent_after: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.seconds < 0:
            raise ConfigError("quarantine", "rounds and seconds must be >= 0")
        if self.escalation < 1:
            raise ConfigError("quarantine.escalation", "must be >= 1")
        if self.permanent_after < 0:
            raise ConfigError("quarantine.permanent_after", "must be >= 0 (0: never permanent)")

    def length(self, offences: int) -> tuple[int, float]:
        """(rounds, seconds) of the quarantine for a device's ``offences``-th offence."""
        factor = self.escalation ** max(offences - 1, 0)
        return round(self.rounds * factor), self.seconds * factor


@dataclass
class Entry:
    """One device's quarantine: why, since when, until when (``None``: permanent), offences so far."""

    rule: str
    since_round: int
    until_round: int | None
    until_time: float | None
    offences: int
    lifted: bool = False


@dataclass
class Quarantine:
    """Who sits out, until when. ``rules`` are the offence rules that quarantine (others only count)."""

    policy: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    rules: set[str] = field(default_factory=set)
    entries: dict[str, Entry] = field(default_factory=dict)
    #: The round the aggregator is in (set with :meth:`begin_round`; offences are dated with it).
    round_id: int = 0
    now: float = 0.0

    def watch(self, rules: Collection[str]) -> None:
        """Make offences under ``rules`` quarantine their sender."""
        self.rules.update(rules)

    def begin_round(self, round_id: int, now: float) -> None:
        self.round_id, self.now = round_id, now

    def offence(self, device: str, rule: str) -> bool:
        """Record an offence; quarantine ``device`` if ``rule`` warrants it and it is not already out.

        Returns whether a new quarantine began (one per round at most: several rules broken in one
        round are one offence).
        """
        if rule not in self.rules:
            return False
        entry = self.entries.get(device)
        if entry is not None and self.blocks(device) and entry.since_round == self.round_id:
            return False
        count = (entry.offences if entry is not None else 0) + 1
        rounds, seconds = self.policy.length(count)
        permanent = self.policy.permanent_after and count >= self.policy.permanent_after
        self.entries[device] = Entry(
            rule=rule,
            since_round=self.round_id,
            until_round=None if permanent else self.round_id + rounds,
            until_time=None if permanent else self.now + seconds,
            offences=count,
        )
        log.warning(
            "device=%s quarantined (%s, offence %d) %s", device, rule, count,
            "permanently" if permanent else f"until round {self.round_id + rounds} and {seconds:.0f}s",
        )  # fmt: skip
        return True

    def blocks(self, device: str, round_id: int | None = None, now: float | None = None) -> bool:
        """Whether ``device`` sits out round ``round_id`` (default: the current one) at ``now``."""
        entry = self.entries.get(device)
        if entry is None or entry.lifted:
            return False
        if entry.until_round is None or entry.until_time is None:
            return True
        r = self.round_id if round_id is None else round_id
        t = self.now if now is None else now
        return r <= entry.until_round or t < entry.until_time

    def blocked(self) -> set[str]:
        return {d for d in self.entries if self.blocks(d)}

    def lift(self, device: str) -> bool:
        """An operator's decision: ``device`` may join again (its offence count stays)."""
        entry = self.entries.get(device)
        if entry is None or not self.blocks(device):
            return False
        entry.lifted = True
        log.warning("device=%s quarantine lifted by the operator (offence %d)", device, entry.offences)
        return True

    # -- persistence -----------------------------------------------------------------------------

    def save(self, store_dir: Path) -> None:
        """Write ``<store>/quarantine.json`` atomically (read by ``fedmq quarantine`` and at restart)."""
        path = Path(store_dir) / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({d: asdict(e) for d, e in sorted(self.entries.items())}, indent=1))
        os.replace(tmp, path)

    def load(self, store_dir: Path) -> None:
        """Restore the entries saved by :meth:`save` (a missing or unreadable file: none)."""
        path = Path(store_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text())
            self.entries = {str(d): Entry(**e) for d, e in data.items()}
        except FileNotFoundError:
            return
        except (ValueError, TypeError) as exc:
            log.error("quarantine state %s unreadable (%s); starting with none", path, exc)

    def apply_lift_requests(self, store_dir: Path) -> list[str]:
        """Lift the quarantines an operator asked for (:func:`request_lift`); returns those lifted."""
        lifted = [d for d in read_lift_requests(store_dir) if self.lift(d)]
        return lifted


def request_lift(store_dir: Path, device: str) -> Path:
    """The operator's side: ask the aggregator using ``store_dir`` to lift ``device``'s quarantine."""
    folder = Path(store_dir) / LIFT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / device
    path.write_text("lift\n")
    return path


def read_lift_requests(store_dir: Path) -> list[str]:
    """Consume the pending lift requests (each file is removed once read)."""
    folder = Path(store_dir) / LIFT_DIR
    if not folder.is_dir():
        return []
    devices = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            devices.append(path.name)
            path.unlink(missing_ok=True)
    return devices
