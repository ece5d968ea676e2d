"""Partial training on the device: frozen blocks stay bit-identical, the delta covers the announced
blocks, and the measured training state fits the budget the aggregator sized the blocks for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aggregator.blocks import choose_blocks, training_cost
from edge_client.memory import activation_profile, plan_training
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.errors import ConfigError
from simulator.workloads.digits import digits_cnn


@pytest.fixture
def trainer():
    torch.manual_seed(0)
    model = FederatedModel(digits_cnn())
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    return LocalTrainer(model, x, y, TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9))


def test_frozen_blocks_are_bit_identical_and_delta_covers_the_trained_blocks(trainer):
    model = trainer.model
    names = [b.name for b in model.blocks]
    assert len(names) >= 3
    start = model.get_flat()
    result = trainer.train(start, blocks=[names[1]])
    after = model.get_flat()
    trained = model.block_slices([names[1]])[0]
    frozen = np.ones(model.dim, bool)
    frozen[trained] = False
    np.testing.assert_array_equal(after[frozen], start[frozen])  # bit-identical
    assert result.delta.shape == (trained.stop - trained.start,)
    np.testing.assert_array_equal(result.delta, (after - start)[trained])
    assert np.any(result.delta != 0)
    assert all(p.requires_grad for p in model.module.parameters())  # restored for the next round


def test_measured_training_state_stays_within_the_budget(trainer):
    model = trainer.model
    blocks = model.layout.blocks()
    full = trainer.train(model.get_flat())
    profile = activation_profile(model, trainer.features, trainer.labels, trainer.loss_fn)
    budget = training_cost(model.dim, blocks[0].size, profile[0])  # room for the first block only
    chosen = choose_blocks(blocks, budget, round_id=0, profile=profile)
    assert chosen is not None and len(chosen) < len(blocks)
    plan = plan_training(
        model, trainer.features, trainer.labels, trainer.config, trainer.loss_fn, chosen, budget=budget
    )
    assert plan.memory.peak <= budget < full.state_bytes
    partial = trainer.train(model.get_flat(), chosen, plan.micro_batch, plan.momentum)
    assert partial.state_bytes <= budget
    # Measured, not modelled: weights + gradients (+ SGD momentum if the plan kept it) of what trained.
    trained = sum(s.stop - s.start for s in model.block_slices(chosen))
    assert partial.state_bytes == 4 * model.dim + (8 if plan.momentum else 4) * trained


def test_unknown_block_is_refused(trainer):
    with pytest.raises(ConfigError, match="blocks"):
        trainer.train(trainer.model.get_flat(), blocks=["nope"])
