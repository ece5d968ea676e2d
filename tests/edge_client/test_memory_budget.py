"""Training under a memory budget: micro-batching keeps the gradient and bounds the activations, the
plan fits the measured step into the budget, and the aggregator's block choice counts activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aggregator.blocks import choose_blocks, set_cost
from edge_client.memory import activation_profile, measure_training_memory, plan_training
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.errors import ConfigError
from simulator.workloads.digits import digits_cnn

LOSS = torch.nn.functional.cross_entropy
CONFIG = TrainConfig(epochs=1, batch_size=16, lr=0.05, momentum=0.9)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(48, 1, 8, 8, generator=gen), torch.randint(0, 10, (48,), generator=gen)


def fresh_model() -> FederatedModel:
    torch.manual_seed(0)
    return FederatedModel(digits_cnn())


@pytest.mark.parametrize("micro", [1, 5, 8])
def test_micro_batching_gives_the_whole_batch_update(data, micro):
    x, y = data
    whole = LocalTrainer(fresh_model(), x, y, CONFIG)
    start = whole.model.get_flat()
    reference = whole.train(start)
    pieces = LocalTrainer(fresh_model(), x, y, CONFIG).train(start, micro_batch=micro)
    # Same gradient up to float summation order: three SGD steps apart only by rounding.
    np.testing.assert_allclose(pieces.delta, reference.delta, rtol=1e-4, atol=1e-6)
    assert pieces.loss == pytest.approx(reference.loss, rel=1e-5)


def test_micro_batch_below_one_is_refused(data):
    x, y = data
    trainer = LocalTrainer(fresh_model(), x, y, CONFIG)
    with pytest.raises(ConfigError, match="micro_batch"):
        trainer.train(trainer.model.get_flat(), micro_batch=0)


def test_activations_shrink_with_the_micro_batch_and_the_frozen_prefix(data):
    x, y = data
    model = fresh_model()
    whole = measure_training_memory(model, x, y, CONFIG, LOSS)
    one = measure_training_memory(model, x, y, CONFIG, LOSS, micro_batch=1)
    assert one.activations * 8 < whole.activations  # one example's worth instead of sixteen
    assert (one.weights, one.gradients) == (whole.weights, whole.gradients)
    profile = activation_profile(model, x, y, LOSS)
    assert len(profile) == len(model.blocks)
    assert profile == sorted(profile, reverse=True) and profile[0] > 2 * profile[-1]
    assert profile[0] == one.activations  # all trainable == backward down to the first block


def test_plan_fits_the_budget_with_the_largest_micro_batch(data):
    x, y = data
    model = fresh_model()
    before = model.get_flat()
    blocks = [model.blocks[0].name]
    lo = measure_training_memory(model, x, y, CONFIG, LOSS, blocks, micro_batch=1).peak
    hi = measure_training_memory(model, x, y, CONFIG, LOSS, blocks).peak
    budget = (lo + hi) // 2
    plan = plan_training(model, x, y, CONFIG, LOSS, blocks, budget=budget)
    micro, step = plan.micro_batch, plan.memory
    assert plan.momentum and 1 < micro < CONFIG.batch_size
    assert step.peak <= budget < hi
    assert measure_training_memory(model, x, y, CONFIG, LOSS, blocks, micro_batch=micro).peak == step.peak
    assert measure_training_memory(model, x, y, CONFIG, LOSS, blocks, micro_batch=micro + 1).peak > budget
    assert np.array_equal(model.get_flat(), before)  # measuring and planning leave the weights as they were


def test_block_choice_counts_activations_and_the_chosen_set_trains_within_the_budget(data):
    x, y = data
    model = fresh_model()
    blocks = model.layout.blocks()
    profile = activation_profile(model, x, y, LOSS)
    first = blocks[0]
    # Room for the first block's parameters, not for them plus one example's activations below it.
    budget = set_cost(blocks, [first], profile) - 1
    assert first.name in choose_blocks(blocks, budget, 0)  # fits if activations were free
    chosen = choose_blocks(blocks, budget, 0, profile)
    assert chosen is not None and first.name not in chosen
    assert set_cost(blocks, [b for b in blocks if b.name in chosen], profile) <= budget
    plan = plan_training(model, x, y, CONFIG, LOSS, chosen, budget=budget)
    assert plan.memory.peak <= budget and plan.micro_batch >= 1
    # A profile for another model is ignored rather than trusted.
    assert first.name in choose_blocks(blocks, budget, 0, profile[:-1])


def test_momentum_goes_only_when_it_does_not_fit(data):
    x, y = data
    model = fresh_model()
    blocks = model.layout.blocks()
    profile = activation_profile(model, x, y, LOSS)
    big = blocks[1]  # the second convolution: most of the parameters
    tight = set_cost(blocks, [big], profile)  # weights + its gradient + one example's activations
    plan = plan_training(model, x, y, CONFIG, LOSS, [big.name], budget=tight)
    assert not plan.momentum and plan.micro_batch == 1 and plan.memory.optimizer_state == 0
    assert plan.memory.peak <= tight
    roomy = tight + 4 * big.size  # room for the momentum buffer too
    plan = plan_training(model, x, y, CONFIG, LOSS, [big.name], budget=roomy)
    assert plan.momentum and plan.memory.optimizer_state == 4 * big.size and plan.memory.peak <= roomy
    # Without momentum the trainer keeps no optimizer state at all.
    trainer = LocalTrainer(model, x, y, CONFIG)
    lean = trainer.train(model.get_flat(), [big.name], plan.micro_batch, momentum=False)
    assert lean.state_bytes == 4 * model.dim + 4 * big.size


def four_blocks():
    """Blocks of 100, 1000, 300 and 50 parameters, their activation profile, and a budget in which the
    big block fits alone and nothing fits beside it."""
    from shared.layout import Block

    blocks, offset = [], 0
    for i, size in enumerate([100, 1000, 300, 50]):
        blocks.append(Block(str(i), (f"{i}.w",), offset, size))
        offset += size
    profile = [400, 300, 200, 100]
    return blocks, profile, set_cost(blocks, blocks[1:2], profile)


def test_rotation_cycles_through_maximal_sets_that_cover_every_block_that_fits():
    from aggregator.blocks import rotation

    blocks, profile, budget = four_blocks()
    sets = [[b.name for b in s] for s in rotation(blocks, budget, profile)]
    assert ["1"] in sets
    assert set().union(*map(set, sets)) == {"0", "1", "2", "3"}
    for i, one in enumerate(sets):  # no set is contained in another
        assert not any(set(one) <= set(other) for j, other in enumerate(sets) if j != i)
    for s in sets:
        assert set_cost(blocks, [b for b in blocks if b.name in s], profile) <= budget
    picked = [tuple(choose_blocks(blocks, budget, r, profile)) for r in range(2 * len(sets))]
    assert picked[: len(sets)] == picked[len(sets) :]  # a cycle
    assert len(set(picked)) == len(sets)


def test_rotation_scales_give_every_block_full_trainings_pace():
    from aggregator.blocks import rotation, rotation_scales

    blocks, profile, budget = four_blocks()
    sets = [{b.name for b in s} for s in rotation(blocks, budget, profile)]
    scales = rotation_scales(blocks, budget, profile)
    for block in blocks:
        held = sum(block.name in s for s in sets)
        assert scales[block.name] == len(sets) / held
        # over one pass of the rotation, a block's summed step is that of one full-training round each
        assert sum(scales[block.name] for s in sets if block.name in s) == len(sets)
    assert scales["1"] == len(sets)  # the big block trains alone, in one set only
    assert rotation_scales(blocks, None, profile) == {}  # no budget: everything trains, no scaling
    assert rotation_scales(blocks, set_cost(blocks, blocks, profile), profile) == {}


def test_measuring_and_estimating_leave_weights_and_batch_norm_statistics_untouched(data):
    x, y = data
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
    )
    model = FederatedModel(module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    measure_training_memory(model, x, y, CONFIG, LOSS)
    activation_profile(model, x, y, LOSS)
    trainer = LocalTrainer(model, x, y, CONFIG, LOSS)
    estimate = trainer.estimate_seconds()
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in module.parameters())
    assert estimate > 0 and trainer.steps_per_round() == 3  # 48 examples, batch 16, one epoch
