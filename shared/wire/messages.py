"""Foundation wire messages: model snapshots, round announcements, plain updates, results, chunks.

Field-level documentation for third-party decoders lives in ``docs/wire.md``; keep the two in step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.errors import InvalidValue
from shared.plan import RoundPlan
from shared.wire.base import Message, message

#: Round phases. ``collect`` is the plain-mode phase; secure aggregation adds its own.
PHASE_COLLECT = "collect"
PHASE_KEYS = "keys"  # secure aggregation: the round starts by collecting keys
PHASE_CLOSED = "closed"
PHASE_ABANDONED = "abandoned"

__all__ = [
    "PHASE_ABANDONED",
    "PHASE_CLOSED",
    "PHASE_COLLECT",
    "PHASE_KEYS",
    "Chunk",
    "ChunkManifest",
    "ChunkReceipt",
    "ModelSnapshot",
    "ModelUpdate",
    "ParamSpec",
    "Presence",
    "RoundAnnounce",
    "RoundResult",
]


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of the flat model layout."""

    name: str
    shape: list[int]


@message("model")
@dataclass(frozen=True)
class ModelSnapshot(Message):
    """The global model at ``version``; published retained so newcomers get it on subscribe.

    ``weights`` is the snapshot body in ``encoding`` (``f32``: raw little-endian float32 of the flat
    layout; compact encodings are described in docs/wire.md). ``sha256`` covers ``weights`` so a device
    can verify a reassembled or cached copy; ``signature`` is the aggregator's Ed25519 signature over
    the message with an empty signature field.
    """

    federation: str
    version: int
    round_id: int
    layout: list[ParamSpec]
    encoding: str
    weights: bytes
    sha256: bytes
    created_at: float
    base_version: int = -1  # for a delta snapshot: the version it applies to
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.version < 0:
            raise InvalidValue("version must be >= 0")
        if len(self.sha256) != 32:
            raise InvalidValue("sha256 must be 32 bytes")

    def weights_ok(self) -> bool:
        return hashlib.sha256(self.weights).digest() == self.sha256


@message("round")
@dataclass(frozen=True, kw_only=True)
class RoundAnnounce(Message):
    """Opens (or moves) a round; retained on ``fl/<fed>/round``.

    ``deadline`` is wall-clock UNIX time; devices use it to set message expiry and to skip rounds they
    cannot make. ``plan`` is the round's typed settings (:class:`shared.plan.RoundPlan`: codec, phase
    windows, staleness rule, DP, blocks, weight cap), decoded and validated field by field.
    """

    federation: str
    round_id: int
    base_version: int
    phase: str
    opened_at: float
    deadline: float
    min_clients: int
    target_clients: int
    plan: RoundPlan = field(default_factory=RoundPlan)
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.round_id < 0 or self.base_version < 0:
            raise InvalidValue("round_id and base_version must be >= 0")
        if self.min_clients < 1 or self.target_clients < self.min_clients:
            raise InvalidValue("need 1 <= min_clients <= target_clients")
        if not self.opened_at <= self.deadline:
            raise InvalidValue("deadline must not precede opened_at")


@message("update")
@dataclass(frozen=True)
class ModelUpdate(Message):
    """A device's plain (unmasked) update for one round: used in trusted mode."""

    round_id: int
    sender: str
    base_version: int
    num_examples: int
    encoding: str
    dim: int
    data: bytes
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise InvalidValue("num_examples must be >= 1")
        if self.dim < 1:
            raise InvalidValue("dim must be >= 1")


@message("result")
@dataclass(frozen=True)
class RoundResult(Message):
    """Outcome of a round, retained on ``fl/<fed>/result``."""

    round_id: int
    status: str  # PHASE_CLOSED or PHASE_ABANDONED
    version: int
    contributors: int
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@message("presence")
@dataclass(frozen=True)
class Presence(Message):
    """Retained online/offline state of one client; ``offline`` is also its last will."""

    client_id: str
    online: bool
    at: float
    #: Bytes this device can spend on local training (weights, gradients, optimizer state, saved
    #: activations); 0 = undeclared.
    memory_budget: int = 0
    #: Per block, in layout order: saved-activation bytes of one example when training starts at that
    #: block (backward stops there). Lets the aggregator size block sets without the model or torch.
    activation_profile: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.memory_budget < 0 or any(a < 0 for a in self.activation_profile):
            raise InvalidValue("memory_budget and activation_profile must be >= 0")


@message("manifest")
@dataclass(frozen=True)
class ChunkManifest(Message):
    """Announces a payload split into ``chunk_count`` chunks (see ``shared.chunking``)."""

    transfer_id: bytes
    total_size: int
    chunk_size: int
    chunk_count: int
    sha256: bytes

    def __post_init__(self) -> None:
        if len(self.transfer_id) != 16 or len(self.sha256) != 32:
            raise InvalidValue("transfer_id must be 16 bytes and sha256 32 bytes")
        if self.total_size < 0 or self.chunk_size < 1:
            raise InvalidValue("sizes must be positive")
        if self.chunk_count != max(1, -(-self.total_size // self.chunk_size)):
            raise InvalidValue("chunk_count does not match total_size / chunk_size")


@message("chunk")
@dataclass(frozen=True)
class Chunk(Message):
    """One piece of a chunked payload."""

    transfer_id: bytes
    index: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.transfer_id) != 16 or self.index < 0:
            raise InvalidValue("bad transfer_id or index")


@message("receipt")
@dataclass(frozen=True)
class ChunkReceipt(Message):
    """The aggregator's word on what it holds of one device's chunked upload (``fl/<fed>/inbox/<cid>``).

    ``held`` is a bitmap, bit ``i % 8`` of byte ``i // 8`` set when chunk ``i`` is held; ``manifest``
    says the manifest arrived (so a gap in ``held`` is a loss, not a chunk still on its way);
    ``complete`` that the message was reassembled. The device re-sends only what is not held.
    """

    round_id: int
    kind: str
    sender: str
    transfer_id: bytes
    held: bytes = b""
    manifest: bool = False
    complete: bool = False

    def __post_init__(self) -> None:
        if self.round_id < 0 or len(self.transfer_id) != 16 or not self.kind or not self.sender:
            raise InvalidValue("bad round_id, kind, sender or transfer_id")
        if len(self.held) > 125_000:  # one bit per chunk index (shared.topics.MAX_CHUNK_INDEX)
            raise InvalidValue("held bitmap longer than the chunk index range")

    def holds(self, index: int) -> bool:
        byte = index // 8
        return self.complete or (byte < len(self.held) and bool(self.held[byte] >> (index % 8) & 1))

    @staticmethod
    def bitmap(indices: Iterable[int]) -> bytes:
        """The ``held`` bitmap of chunk ``indices``."""
        found = sorted(set(indices))
        out = bytearray((found[-1] // 8 + 1) if found else 0)
        for i in found:
            out[i // 8] |= 1 << (i % 8)
        return bytes(out)
