"""Which parameter blocks train in a round: sized to the devices' memory, rotating so all train.

FTTE (Tenison et al., arXiv 2510.03165) trains and sends only a parameter subset sized to the weakest
device. Here a device declares the bytes it can spend on *training state*; training a block set ``S`` of
a model with ``D`` parameters costs about

    4 D            the weights (every block is held, frozen or not)
  + 12 |S|         gradients, SGD momentum and the delta of the trainable parameters (float32 each)

bytes. The aggregator picks, each round, the longest run of consecutive blocks (wrapping around) that
fits the smallest declared budget, starting one block later every round, so every block trains over
time. Activations are the device's own concern: it declares its budget net of them.
"""

from __future__ import annotations

import logging

from shared.layout import Block

log = logging.getLogger(__name__)

BYTES_PER_WEIGHT = 4
BYTES_PER_TRAINABLE = 12


def training_cost(total_params: int, trainable_params: int) -> int:
    return BYTES_PER_WEIGHT * total_params + BYTES_PER_TRAINABLE * trainable_params


def choose_blocks(blocks: list[Block], budget: int | None, round_id: int) -> list[str] | None:
    """Trainable block names for ``round_id`` under ``budget`` bytes; None means "all blocks"."""
    total = sum(b.size for b in blocks)
    if budget is None or training_cost(total, total) <= budget:
        return None
    start = round_id % len(blocks)
    chosen: list[Block] = []
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)]
        if training_cost(total, sum(b.size for b in chosen) + block.size) > budget:
            break
        chosen.append(block)
    if not chosen:
        smallest = min(blocks, key=lambda b: b.size)
        log.warning(
            "memory budget %d B is below the cost of any block; training only %s", budget, smallest.name
        )
        chosen = [smallest]
    names = {b.name for b in chosen}
    return [b.name for b in blocks if b.name in names]  # layout order
