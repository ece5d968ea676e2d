"""Which parameter blocks train in a round: sized to the devices' memory, rotating so all train.

FTTE (Tenison et al., arXiv 2510.03165) trains and sends only a parameter subset sized to the weakest
device. A device declares the bytes it can spend on local training and, per block, the activations one
example saves when backward stops at that block (``Presence.activation_profile``, measured on the device
by ``edge_client/memory.py``). Training a block set ``S`` whose earliest block is ``f`` of a model with
``D`` parameters then costs about

    4 D              the weights (every block is held, frozen or not)
  + 4 |S|            the gradient of each trainable parameter (float32)
  + act[f]           one example's saved activations; blocks before f save nothing

bytes: the least the device can train ``S`` with. It spends what is left of its budget on SGD momentum
(4 B per trainable parameter) and then on more examples per pass (``edge_client.memory.plan_training``).
Rounds cycle through the maximal runs of consecutive blocks (wrapping around) that fit the smallest
declared budget (:func:`rotation`), so every block that fits on its own trains over time, as often as
the budget allows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.layout import Block

log = logging.getLogger(__name__)

BYTES_PER_WEIGHT = 4
BYTES_PER_TRAINABLE = 4


def training_cost(total_params: int, trainable_params: int, activations: int = 0) -> int:
    """Bytes to train ``trainable_params`` of ``total_params`` with ``activations`` saved per pass."""
    return BYTES_PER_WEIGHT * total_params + BYTES_PER_TRAINABLE * trainable_params + activations


def set_cost(blocks: Sequence[Block], chosen: Sequence[Block], profile: Sequence[int] | None) -> int:
    """:func:`training_cost` of the block set ``chosen`` (activations from its earliest block)."""
    total = sum(b.size for b in blocks)
    first = min(blocks.index(b) for b in chosen)
    act = profile[first] if profile else 0
    return training_cost(total, sum(b.size for b in chosen), act)


def rotation(blocks: list[Block], budget: int, profile: Sequence[int] | None = None) -> list[list[Block]]:
    """The block sets rounds cycle through under ``budget``: from every start, the longest run of
    consecutive blocks (wrapping around) that fits, keeping only sets no other set contains.

    Every block that fits on its own is in one of them, and no round trains a strict subset of what
    another could, so each block trains as often as the budget allows. A block that fits nowhere is
    left out (logged); if none fits, the cheapest block alone is the rotation.
    """
    runs: list[list[Block]] = []
    for start in range(len(blocks)):
        chosen: list[Block] = []
        for i in range(len(blocks)):
            block = blocks[(start + i) % len(blocks)]
            if set_cost(blocks, [*chosen, block], profile) > budget:
                break
            chosen.append(block)
        if chosen:
            runs.append(chosen)
    if not runs:
        cheapest = min(blocks, key=lambda b: set_cost(blocks, [b], profile))
        log.warning(
            "memory budget %d B is below the cost of every block; training only the cheapest, %s (%d B)",
            budget, cheapest.name, set_cost(blocks, [cheapest], profile),
        )  # fmt: skip
        return [[cheapest]]
    names = [frozenset(b.name for b in run) for run in runs]
    kept = [
        run
        for i, run in enumerate(runs)
        if not any(names[i] < other or (names[i] == other and j < i) for j, other in enumerate(names))
    ]
    left_out = {b.name for b in blocks} - set().union(*names)
    if left_out:
        log.warning("memory budget %d B cannot train blocks %s at all", budget, sorted(left_out))
    return kept


def rotation_scales(
    blocks: list[Block], budget: int | None, profile: Sequence[int] | None = None
) -> dict[str, float]:
    """Per block, the server-step factor that undoes the rotation's dilution: the number of block sets
    in the :func:`rotation` over the number that hold the block (empty when every block trains).

    A block that trains in one round of every ``m`` would otherwise move ``m`` times less per unit of
    time than under full training. Scaling its averaged delta by ``m`` when it does train gives every
    block the pace full training would (in the fleet experiment it closed most of the accuracy gap to
    full training: ``docs/fleet.md``).
    """
    if profile is not None and len(profile) != len(blocks):
        profile = None
    if budget is None or set_cost(blocks, blocks, profile) <= budget:
        return {}
    sets = rotation(blocks, budget, profile)
    return {
        b.name: len(sets) / held
        for b in blocks
        if (held := sum(any(c.name == b.name for c in s) for s in sets))
    }


def choose_blocks(
    blocks: list[Block], budget: int | None, round_id: int, profile: Sequence[int] | None = None
) -> list[str] | None:
    """Trainable block names for ``round_id`` under ``budget`` bytes (the :func:`rotation` set
    ``round_id`` falls on); None means "all blocks".

    ``profile`` is the per-block activation cost (see the module docstring); without one, activations
    are not counted.
    """
    if profile is not None and len(profile) != len(blocks):
        log.warning("activation profile has %d entries for %d blocks; ignored", len(profile), len(blocks))
        profile = None
    if budget is None or set_cost(blocks, blocks, profile) <= budget:
        return None
    sets = rotation(blocks, budget, profile)
    names = {b.name for b in sets[round_id % len(sets)]}
    return [b.name for b in blocks if b.name in names]  # layout order
