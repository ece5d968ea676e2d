"""The round plan: every per-round setting a device needs, as one frozen, validated type.

The aggregator builds a :class:`RoundPlan` per round (``aggregator/rounds.py``); it travels inside the
signed ``RoundAnnounce`` and the wire layer decodes it field by field (``shared/wire/base.py``: unknown
fields, wrong types and out-of-range values are a ``WireError``). Devices read typed fields instead of
digging through a map, and every default lives here, once.

Why a type and not a map: a map lets each reader pick its own default for a missing key (the device's
weight cap used to repeat the aggregator's), and a typo in a key reads as "absent". A dataclass refuses
both at decode time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import ConfigError
from shared.staleness import StalenessPolicy

MODE_SECURE = "secure"
MODE_PLAIN = "plain"
PLAN_MODES = (MODE_SECURE, MODE_PLAIN)
#: A device's FedAvg weight is ``min(examples / weight_cap, 1)``: bounded contribution per device.
DEFAULT_WEIGHT_CAP = 1000
#: Bounds a decoder enforces, so a hostile announcement cannot make a device allocate or wait forever.
MAX_WINDOW_S = 86_400.0
MAX_BLOCKS = 4096
MAX_BLOCK_NAME = 256
MAX_WEIGHT_CAP = 1 << 30
#: Version of the plan's shape. An announcement whose plan has another version is refused (a
#: ``WireError`` naming the field), never half-read; bump it whenever a field changes meaning or type.
#: (Before the plan existed, announcements carried an untyped ``config`` map, which decoders of this
#: version refuse as an unknown field.)
PLAN_VERSION = 1

__all__ = [
    "DEFAULT_WEIGHT_CAP",
    "MODE_PLAIN",
    "MODE_SECURE",
    "PLAN_VERSION",
    "PhaseWindows",
    "RoundPlan",
]


def _window(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"windows.{name}", f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not 0 < value <= MAX_WINDOW_S:
        raise ConfigError(f"windows.{name}", f"must be in (0, {MAX_WINDOW_S:g}] seconds, got {value!r}")


@dataclass(frozen=True)
class PhaseWindows:
    """Seconds each secure phase may take; ``masked`` includes the devices' local training."""

    keys: float = 5.0
    shares: float = 5.0
    masked: float = 30.0
    unmask: float = 5.0

    def __post_init__(self) -> None:
        for name in ("keys", "shares", "masked", "unmask"):
            _window(name, getattr(self, name))

    @property
    def total(self) -> float:
        return self.keys + self.shares + self.masked + self.unmask

    @property
    def until_masked_closes(self) -> float:
        """Seconds from the round's opening to the latest moment its masked phase can still be open."""
        return self.keys + self.shares + self.masked


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """What a round asks of its devices. Plain rounds need only ``mode``; secure rounds carry the rest.

    Attributes:
        version: the plan format's version (:data:`PLAN_VERSION`); any other is refused.
        mode: ``"secure"`` (SecAgg+ phases, integer codec) or ``"plain"`` (float32 updates to a trusted
            aggregator).
        encoding: the plain-mode update encoding (``"f32"``).
        weight_cap: a device's weight is ``min(examples / weight_cap, 1)``.
        windows: the secure phases' windows.
        staleness: how a device weights (or discards) a delta trained on an older snapshot.
        codec: the secure uplink codec with this round's fresh seed; ``expected_clients`` is set per
            roster (:meth:`codec_for`).
        dp: differential privacy with the resolved noise multiplier; None when off.
        blocks: partial training: the blocks trained this round, in layout order; None = every block.
    """

    version: int = PLAN_VERSION
    mode: str = MODE_PLAIN
    encoding: str = "f32"
    weight_cap: int = DEFAULT_WEIGHT_CAP
    windows: PhaseWindows | None = None
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)
    codec: CodecConfig | None = None
    dp: DPConfig | None = None
    blocks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise ConfigError("plan.version", f"{self.version!r} is not {PLAN_VERSION} (this build's plan)")
        if self.mode not in PLAN_MODES:
            raise ConfigError("plan.mode", f"{self.mode!r} is not one of {PLAN_MODES}")
        if self.encoding != "f32":
            raise ConfigError("plan.encoding", f"{self.encoding!r} is not 'f32'")
        if isinstance(self.weight_cap, bool) or not 1 <= self.weight_cap <= MAX_WEIGHT_CAP:
            raise ConfigError("plan.weight_cap", f"must be in [1, {MAX_WEIGHT_CAP}], got {self.weight_cap!r}")
        if self.blocks is not None:
            if not 1 <= len(self.blocks) <= MAX_BLOCKS:
                raise ConfigError("plan.blocks", f"must name 1..{MAX_BLOCKS} blocks, got {len(self.blocks)}")
            if len(set(self.blocks)) != len(self.blocks):
                raise ConfigError("plan.blocks", "names a block twice")
            if any(not name or len(name) > MAX_BLOCK_NAME for name in self.blocks):
                raise ConfigError("plan.blocks", f"block names must be 1..{MAX_BLOCK_NAME} characters")
        if self.dp is not None:
            if not self.dp.enabled:
                raise ConfigError("plan.dp", "is present but off; a plan without DP carries none")
            self.dp.validate()
            if self.dp.noise_multiplier is None:
                raise ConfigError("plan.dp.noise_multiplier", "must be resolved before it is announced")
        if self.mode == MODE_PLAIN:
            if self.codec is not None or self.dp is not None or self.blocks is not None:
                raise ConfigError("plan", "a plain round carries no codec, DP or blocks")
            return
        if self.codec is None or self.windows is None:
            raise ConfigError("plan", "a secure round needs a codec and phase windows")
        self.codec.validate(secure=True)
        if self.dp is not None and self.dp.clip_norm != self.codec.clip_norm:
            raise ConfigError("plan.dp.clip_norm", f"must equal codec.clip_norm ({self.codec.clip_norm})")

    @property
    def secure(self) -> bool:
        return self.mode == MODE_SECURE

    @property
    def masked_window(self) -> float:
        """Seconds devices have to train and send their masked input (inf when unannounced)."""
        return self.windows.masked if self.windows is not None else math.inf

    @property
    def sampling_q(self) -> float | None:
        """Poisson self-sampling probability under DP (None: every device takes part)."""
        return self.dp.sampling_q if self.dp is not None else None

    def codec_for(self, roster_size: int) -> CodecConfig:
        """The codec both sides use once the roster is known (sized for ``roster_size`` contributors)."""
        if self.codec is None:
            raise ConfigError("plan.codec", "a plain round has no codec")
        return replace(self.codec, expected_clients=roster_size).validate(secure=True)

    def example_weight(self, num_examples: int) -> float:
        """A device's FedAvg weight in [0, 1]: its example count over the cap, capped at 1."""
        return min(num_examples / self.weight_cap, 1.0)
