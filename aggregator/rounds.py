"""The aggregator's round policy as pure functions: no I/O, no clocks, no randomness of its own.

``aggregator/engine.py`` drives rounds (MQTT, store, timers) and asks this module what to do:

* :func:`recover` — after a (re)start, what to do with the round the store still has open;
* :func:`choose_round_blocks` — partial training: this round's trainable blocks and rotation scales
  from the memory budgets and activation profiles the devices declared;
* :func:`plan_secure_round` / :func:`plan_plain_round` — the :class:`~shared.plan.RoundPlan` announced;
* :func:`expand_partial` — put a mean over this round's blocks back into the full layout, with the
  rotation's per-block step scales.

The fleet benchmark (``benchmarks/fleet``) calls the same functions, so it measures this policy and not a
copy of it; ``tests/aggregator/`` tests them without a broker.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.blocks import choose_blocks, rotation_scales
from aggregator.config import AggregatorConfig
from aggregator.store import RoundRecord
from shared.dp import DPConfig, PrivacyAccountant, sum_noise_headroom
from shared.errors import CodecError, ConfigError
from shared.layout import Block
from shared.plan import MODE_PLAIN, MODE_SECURE, RoundPlan
from shared.wire import RoundAnnounce

log = logging.getLogger("aggregator.engine")


class Recovery(enum.Enum):
    """What to do with the store's last round when a round is about to start."""

    #: No round is open: start the next one.
    NONE = "none"
    #: The snapshot of the open round was written before the crash: it did close; mark it closed.
    MARK_CLOSED = "mark-closed"
    #: A plain round whose window may still be open: resume it from its journal.
    RESUME = "resume"
    #: A secure round's protocol state was in memory only: abandon it.
    ABANDON = "abandon"


def recover(last: RoundRecord | None, snapshot_round: int | None, *, secure: bool) -> Recovery:
    """Decide the fate of ``last`` (the store's newest round) given the round of the newest snapshot."""
    if last is None or last.status != "open":
        return Recovery.NONE
    if snapshot_round is not None and snapshot_round >= last.round_id:
        return Recovery.MARK_CLOSED
    return Recovery.ABANDON if secure else Recovery.RESUME


def next_round_id(last: RoundRecord | None) -> int:
    return 0 if last is None else last.round_id + 1


@dataclass(frozen=True)
class BlockChoice:
    """One round's trainable blocks (None: all of them) and the rotation's per-block step scales."""

    blocks: tuple[str, ...] | None = None
    scales: Mapping[str, float] = dataclasses.field(default_factory=dict)


def choose_round_blocks(
    blocks: Sequence[Block],
    round_id: int,
    *,
    budgets: Iterable[int],
    profiles: Iterable[Sequence[int]],
) -> BlockChoice:
    """The blocks to train under the smallest declared memory budget, rotating with ``round_id``.

    Devices run the same model, so per block the largest declared activation figure is the safe one;
    profiles of another length (another model) are ignored.
    """
    positive = [b for b in budgets if b > 0]
    budget = min(positive) if positive else None
    matching = [list(p) for p in profiles if len(p) == len(blocks)]
    profile = [max(column) for column in zip(*matching, strict=True)] if matching else None
    chosen = choose_blocks(list(blocks), budget, round_id, profile)
    return BlockChoice(
        tuple(chosen) if chosen is not None else None, rotation_scales(list(blocks), budget, profile)
    )


def announcement(
    config: AggregatorConfig,
    round_id: int,
    plan: RoundPlan,
    *,
    phase: str,
    opened_at: float,
    deadline: float,
    base_version: int,
) -> RoundAnnounce:
    """The (unsigned) announcement of a round: the config's client counts, the plan, the times."""
    return RoundAnnounce(
        federation=config.federation,
        round_id=round_id,
        base_version=base_version,
        phase=phase,
        opened_at=opened_at,
        deadline=deadline,
        min_clients=config.min_clients,
        target_clients=config.target_clients,
        plan=plan,
    )


def budget_allows(accountant: PrivacyAccountant | None, dp: DPConfig, noise_multiplier: float | None) -> bool:
    """Whether another round at ``noise_multiplier`` keeps epsilon within ``dp.budget_epsilon``."""
    if not dp.enabled or dp.budget_epsilon is None or accountant is None or noise_multiplier is None:
        return True
    if not accountant.would_exceed(dp.budget_epsilon, noise_multiplier):
        return True
    log.warning("privacy budget: another round would take epsilon from %.3f past %.3f; stopping",
                accountant.epsilon(), dp.budget_epsilon)  # fmt: skip
    return False


def plan_plain_round() -> RoundPlan:
    return RoundPlan(mode=MODE_PLAIN)


def plan_secure_round(
    config: AggregatorConfig,
    *,
    seed: bytes,
    blocks: tuple[str, ...] | None = None,
    noise_multiplier: float | None = None,
) -> RoundPlan:
    """The plan of a secure round: the configured codec with this round's ``seed``, and DP resolved.

    In distributed DP the codec leaves room in Z_2^b for the sum's noise
    (:func:`shared.dp.sum_noise_headroom`: the dropout margin and the credited noise shares).
    """
    codec = dataclasses.replace(config.codec, seed=seed)
    dp = None
    if config.dp.enabled:
        if noise_multiplier is None:
            raise ConfigError("dp.noise_multiplier", "a DP round needs its resolved noise multiplier")
        if config.dp.mode == "distributed":
            headroom = sum_noise_headroom(noise_multiplier, config.dp.dropout_margin, config.min_clients)
            codec = dataclasses.replace(codec, noise_multiplier=headroom)
        dp = dataclasses.replace(
            config.dp,
            noise_multiplier=noise_multiplier,
            target_epsilon=None,
            target_rounds=None,
            clip_norm=codec.clip_norm,
        )
    return RoundPlan(
        mode=MODE_SECURE,
        weight_cap=config.weight_cap,
        windows=config.windows,
        staleness=config.staleness,
        codec=codec,
        dp=dp,
        blocks=blocks,
    )


@dataclass(frozen=True)
class Expansion:
    """A round's mean over the full layout, and what partial training did to it (for the result)."""

    mean: np.ndarray
    metrics: dict[str, float]


def expand_partial(
    mean: np.ndarray,
    *,
    dim: int,
    slices: Sequence[tuple[str, slice]] | None,
    scales: Mapping[str, float] | None = None,
) -> Expansion:
    """Scatter a mean over this round's blocks (``slices``, in layout order) into a ``dim`` vector.

    Blocks outside the round do not move. With ``scales`` (the rotation-compensated step), each block's
    mean is multiplied by its scale so a block keeps full training's pace though it trains only in some
    rounds. ``slices`` None: the mean already covers the whole layout.
    """
    if not slices:
        return Expansion(mean, {})
    covered = sum(part.stop - part.start for _, part in slices)
    if covered != mean.size:
        raise CodecError(f"mean has {mean.size} coordinates, the round's blocks {covered}")
    full = np.zeros(dim, np.float32)
    offset = 0
    for name, part in slices:
        size = part.stop - part.start
        full[part] = mean[offset : offset + size]
        if scales is not None:
            full[part] *= np.float32(scales.get(name, 1.0))
        offset += size
    metrics = {"trained_fraction": offset / dim}
    if scales:
        metrics["rotation_scale"] = max(scales.get(name, 1.0) for name, _ in slices)
    return Expansion(full, metrics)
