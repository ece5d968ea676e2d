"""The enrolled set of a federation, signed by its enrolment authority, and the live directory built from it.

Why: a static directory file on every device made growing or shrinking a fleet a fleet-wide restart
(devices refuse a roster that lists a device they do not know). Instead, every component trusts one
*enrolment authority* key (created by ``fedmq init`` and kept by the operator, not by the aggregator)
and accepts the enrolled set only as an :class:`EnrolmentList` signed by it. The aggregator publishes
the current list retained on ``fl/<fed>/enrolment``; devices verify it and update their
:class:`LiveDirectory` in place, so the next roster may name a device enrolled a minute ago.

Ordering rule, so no round stalls on a change: the aggregator's set is kept a *subset* of every
device's set. Devices add new keys at once and forget revoked ones only after ``removal_grace_s``; the
aggregator drops revoked devices at once and admits new ones only after ``addition_grace_s``. A roster
(built from the aggregator's set) therefore never lists a device the devices do not yet know.

A list carries a ``serial`` that only grows (older or equal serials are ignored: no rollback by
replaying an old retained message) and the federation's ``epoch`` (random, made by ``fedmq init``), so
a list of another federation instance with the same name is refused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import nacl.exceptions
import nacl.signing

from shared.errors import ConfigError, IncompatibleError, ProtocolError
from shared.topics import check_id
from shared.wire import Message, decode, encode, message

log = logging.getLogger(__name__)


class EnrolmentError(ProtocolError):
    """An enrolment list was refused: bad signature, other federation or epoch, or an older serial."""


class FederationMismatch(EnrolmentError, IncompatibleError):
    """The list is of another instance of the federation (another ``fedmq init``): re-provision."""


@dataclass(frozen=True)
class EnrolledDevice:
    """One enrolled device: its id (= broker account) and its Ed25519 verify key."""

    device: str
    key: bytes


@message("enrolment")
@dataclass(frozen=True)
class EnrolmentList(Message):
    """The enrolled devices of ``federation`` at ``serial``, signed by the enrolment authority.

    ``devices`` is sorted by id so the signed encoding is canonical; ``revoked`` lists ids that were
    enrolled once and must not come back with the same id (audit trail; they are not in ``devices``).
    """

    federation: str
    epoch: bytes
    serial: int
    issued_at: float
    devices: list[EnrolledDevice] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.serial < 0:
            raise ValueError("serial must be >= 0")
        if len(self.epoch) != 16:
            raise ValueError("epoch must be 16 bytes")
        ids = [d.device for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("a device is listed twice")
        if set(ids) & set(self.revoked):
            raise ValueError("a device is both enrolled and revoked")
        for d in self.devices:
            if len(d.key) != 32:
                raise ValueError(f"key of {d.device!r} must be 32 bytes")

    def directory(self) -> dict[str, bytes]:
        return {d.device: d.key for d in self.devices}


def _unsigned(msg: EnrolmentList) -> bytes:
    return encode(replace(msg, signature=b""))


def make_list(
    federation: str,
    epoch: bytes,
    serial: int,
    directory: Mapping[str, bytes],
    revoked: list[str] | tuple[str, ...],
    authority: nacl.signing.SigningKey,
) -> EnrolmentList:
    """A new signed list (ids validated, devices sorted)."""
    check_id(federation, "federation")
    for device in [*directory, *revoked]:
        check_id(device, "device")
    unsigned = EnrolmentList(
        federation=federation,
        epoch=epoch,
        serial=serial,
        issued_at=time.time(),
        devices=[EnrolledDevice(d, bytes(directory[d])) for d in sorted(directory)],
        revoked=sorted(set(revoked)),
    )
    return replace(unsigned, signature=authority.sign(_unsigned(unsigned)).signature)


def verify_list(
    payload: bytes | EnrolmentList, authority_key: bytes, federation: str, epoch: bytes | None = None
) -> EnrolmentList:
    """Decode and check a list: signed by ``authority_key``, for ``federation`` (and ``epoch`` if given).

    Raises :class:`EnrolmentError` (a ProtocolError) or WireError; never returns an unverified list.
    """
    msg = payload if isinstance(payload, EnrolmentList) else decode(payload, EnrolmentList)
    if msg.federation != federation:
        raise EnrolmentError(f"enrolment list is for federation {msg.federation!r}, not {federation!r}")
    if epoch is not None and msg.epoch != epoch:
        raise FederationMismatch(
            f"enrolment list is of another instance of federation {federation!r} "
            f"(epoch {msg.epoch.hex()[:8]}, expected {epoch.hex()[:8]}): re-provision this component"
        )
    try:
        nacl.signing.VerifyKey(authority_key).verify(_unsigned(msg), msg.signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise EnrolmentError("enrolment list is not signed by this federation's enrolment authority") from exc
    return msg


def read_list_file(path: Path) -> EnrolmentList:
    """The (unverified) list stored in ``path``; verify it with :func:`verify_list`."""
    try:
        return decode(Path(path).read_bytes(), EnrolmentList)
    except OSError as exc:
        raise ConfigError("enrolment", f"cannot read {path}: {exc}") from exc


def write_list_file(path: Path, msg: EnrolmentList) -> None:
    """Atomically replace ``path`` with ``msg`` (a reader never sees half a list)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode(msg))
    tmp.replace(path)


class LiveDirectory(Mapping[str, bytes]):
    """A read-only mapping {device id: verify key} whose contents the enrolment code swaps in place.

    The SecAgg client and server, and ``AggregatorConfig.allows``, hold a reference to this object, so
    an update is seen by the next roster check without rebuilding any of them. Reads take no lock (a
    whole dict is swapped in one assignment); writers serialise on a lock.
    """

    #: May be empty in a secure configuration: devices are enrolled while the federation runs.
    live = True

    def __init__(self, entries: Mapping[str, bytes] | None = None, serial: int = -1) -> None:
        self._entries: dict[str, bytes] = dict(entries or {})
        self.serial = serial
        self._lock = threading.Lock()

    def __getitem__(self, device: str) -> bytes:
        return self._entries[device]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, device: object) -> bool:
        return device in self._entries

    def add(self, entries: Mapping[str, bytes]) -> None:
        with self._lock:
            self._entries = {**self._entries, **entries}

    def remove(self, devices: set[str] | frozenset[str]) -> None:
        with self._lock:
            self._entries = {d: k for d, k in self._entries.items() if d not in devices}


@dataclass(frozen=True)
class Change:
    """What a newer list changes relative to a directory."""

    serial: int
    added: dict[str, bytes]
    removed: frozenset[str]


def diff(directory: Mapping[str, bytes], msg: EnrolmentList) -> Change:
    """Additions (new ids, or a new key for a known id) and removals that ``msg`` makes to ``directory``."""
    wanted = msg.directory()
    added = {d: k for d, k in wanted.items() if directory.get(d) != k}
    removed = frozenset(d for d in directory if d not in wanted)
    return Change(msg.serial, added, removed)


class EnrolmentFollower:
    """Applies verified lists to a :class:`LiveDirectory`, some changes at once and some after a grace.

    The aggregator uses ``delay_additions`` (removals at once), devices ``delay_removals`` (additions at
    once); see the module docstring for why. A newer list replaces whatever was still pending. Call
    :meth:`offer` from the event loop; :meth:`close` cancels a pending timer.
    """

    def __init__(
        self,
        directory: LiveDirectory,
        authority_key: bytes,
        federation: str,
        *,
        epoch: bytes | None = None,
        delay_additions: float = 0.0,
        delay_removals: float = 0.0,
        on_change: Callable[[EnrolmentList], None] | None = None,
    ) -> None:
        self.directory = directory
        self.authority_key = authority_key
        self.federation = federation
        self.epoch = epoch
        self.delay_additions = delay_additions
        self.delay_removals = delay_removals
        self.on_change = on_change
        self.current: EnrolmentList | None = None
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, payload: bytes | EnrolmentList) -> EnrolmentList | None:
        """Verify ``payload``; apply it if newer than what we hold. Returns it if applied, None if it was
        not newer. Raises EnrolmentError/WireError for a list that must be refused."""
        msg = verify_list(payload, self.authority_key, self.federation, self.epoch)
        if self.epoch is None:
            self.epoch = msg.epoch  # the first verified list pins the federation instance
        held = self.current.serial if self.current is not None else self.directory.serial
        if msg.serial <= held:
            return None
        self.current = msg
        self.directory.serial = msg.serial
        change = diff(self.directory, msg)
        add_now, remove_now = self.delay_additions <= 0, self.delay_removals <= 0
        if add_now:
            self.directory.add(change.added)
        if remove_now:
            self.directory.remove(change.removed)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = (not add_now and change.added) or (not remove_now and change.removed)
        if pending:  # the rest after the grace (``_apply_later`` re-diffs against the newest list)
            delay = max(self.delay_additions, self.delay_removals)
            self._timer = asyncio.get_running_loop().call_later(delay, self._apply_later, msg)
        log.info(
            "enrolment list serial %d: %d devices (+%d -%d)%s",
            msg.serial, len(msg.devices), len(change.added), len(change.removed),
            f"; applying part in {max(self.delay_additions, self.delay_removals):.1f}s"
            if self._timer is not None else "",
        )  # fmt: skip
        if self.on_change is not None:
            self.on_change(msg)
        return msg

    def _apply_later(self, msg: EnrolmentList) -> None:
        self._timer = None
        if self.current is not msg:
            return
        change = diff(self.directory, msg)
        self.directory.add(change.added)
        self.directory.remove(change.removed)
        log.info("enrolment list serial %d fully applied: %d devices", msg.serial, len(self.directory))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def authority_from_hex(text: str, field_name: str = "authority_key") -> bytes:
    """A 32-byte public key from hex, or ConfigError naming ``field_name``."""
    try:
        key = bytes.fromhex(text.strip())
    except (ValueError, AttributeError) as exc:
        raise ConfigError(field_name, "must be 64 hex characters") from exc
    if len(key) != 32:
        raise ConfigError(field_name, f"must be a 32-byte key, got {len(key)} bytes")
    return key


__all__ = [
    "Change",
    "EnrolledDevice",
    "EnrolmentError",
    "EnrolmentFollower",
    "EnrolmentList",
    "FederationMismatch",
    "LiveDirectory",
    "authority_from_hex",
    "diff",
    "make_list",
    "read_list_file",
    "verify_list",
    "write_list_file",
]
