"""The wide digits workload: the demo's split with a 1.1M-parameter MLP (issue 4's bytes-per-coordinate
targets are measured on it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edge_client.trainer import LocalTrainer
from simulator.models import digits_wide_mlp
from simulator.workloads import WORKLOAD_NAMES, get_workload
from simulator.workloads.digits import TRAIN_EXAMPLES, load_digits_mlp_workload
from simulator.workloads.digits_wide import PARAMETERS


def test_wide_model_has_the_documented_size_and_is_deterministic() -> None:
    assert "digits-wide" in WORKLOAD_NAMES
    workload = get_workload("digits-wide", 4, seed=0)
    model = workload.federated_model()
    assert model.dim == PARAMETERS == 1_126_410
    assert np.array_equal(model.get_flat(), workload.federated_model().get_flat())
    state = torch.random.get_rng_state()
    digits_wide_mlp(seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone


def test_wide_workload_uses_the_demo_split() -> None:
    wide, demo = get_workload("digits-wide", seed=0), load_digits_mlp_workload(20, seed=0)
    assert wide.n_devices == 20 and sum(wide.device_sizes) == TRAIN_EXAMPLES
    assert wide.device_sizes == demo.device_sizes
    for (xw, yw), (xd, yd) in zip(wide.device_data, demo.device_data):
        assert torch.equal(xw, xd) and torch.equal(yw, yd)
    assert torch.equal(wide.test_data[0], demo.test_data[0])


def test_one_local_step_reduces_the_loss() -> None:
    workload = get_workload("digits-wide", 4, seed=0)
    model = workload.federated_model()
    x, y = workload.device_data[0]
    config = dataclasses.replace(workload.train_config, steps=1, batch_size=len(y))
    initial = model.get_flat()
    with torch.no_grad():
        before = float(workload.loss_fn(model.module(x), y))
    result = LocalTrainer(model, x, y, config, workload.loss_fn).train(initial)
    model.set_flat(initial + result.delta)
    with torch.no_grad():
        after = float(workload.loss_fn(model.module(x), y))
    assert np.isfinite(result.delta).all() and np.linalg.norm(result.delta) > 0
    assert after < before, (before, after)
