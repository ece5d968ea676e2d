"""Every workload loads offline with its documented sizes, and a short in-memory FedAvg run (no MQTT)
with the edge trainer improves its metric over the initial model."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest

from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.errors import ConfigError
from simulator.workloads import WORKLOAD_NAMES, Workload, digits, get_workload, shakespeare, tabular

SMALL_FLEET = {
    "digits-mlp": 4,
    "digits-wide": 4,
    "digits": 4,
    "health": 3,
    "finance": 4,
    "shakespeare": 4,
    "shakespeare-lora": 4,
    "shakespeare-full": 2,
}


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("a workload loader tried to open a network connection")


@pytest.fixture(scope="module")
def default_workloads() -> Iterator[dict[str, Workload]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "create_connection", _no_network)
        yield {name: get_workload(name, seed=0) for name in WORKLOAD_NAMES}


def test_documented_devices_and_examples(default_workloads: dict[str, Workload]) -> None:
    w = default_workloads
    assert w["digits"].n_devices == digits.DEFAULT_DEVICES == 10
    assert sum(w["digits"].device_sizes) == digits.TRAIN_EXAMPLES == 1437
    assert len(w["digits"].test_data[1]) == digits.TEST_EXAMPLES == 360
    assert tuple(w["digits"].device_data[0][0].shape[1:]) == (1, 8, 8)
    assert w["digits-mlp"].n_devices == 20 and sum(w["digits-mlp"].device_sizes) == digits.TRAIN_EXAMPLES
    assert tuple(w["digits-mlp"].device_data[0][0].shape[1:]) == (64,)

    assert w["health"].n_devices == tabular.HEALTH_DEFAULT_DEVICES == 5
    assert sum(w["health"].device_sizes) == tabular.HEALTH_TRAIN_EXAMPLES == 455
    assert len(w["health"].test_data[1]) == tabular.HEALTH_TEST_EXAMPLES == 114
    assert min(w["health"].device_sizes) >= 10

    assert w["finance"].n_devices == tabular.FINANCE_DEFAULT_DEVICES == 10
    assert sum(w["finance"].device_sizes) == tabular.FINANCE_TRAIN_EXAMPLES == 3200
    assert len(w["finance"].test_data[1]) == tabular.FINANCE_TEST_EXAMPLES == 800
    labels = np.concatenate([y.numpy() for _, y in w["finance"].device_data])
    assert 0.08 < labels.mean() < 0.12  # the documented ~10% default rate

    for name, devices in (("shakespeare", 16), ("shakespeare-lora", 8)):
        workload = w[name]
        assert workload.n_devices == devices
        assert workload.device_sizes == [shakespeare.TRAIN_PER_DEVICE] * devices == [192] * devices
        assert len(workload.test_data[1]) == shakespeare.TEST_PER_DEVICE * devices
        assert tuple(workload.device_data[0][0].shape) == (192, shakespeare.SEQ_LEN)
    assert len(shakespeare.load_roles()) == 242  # eligible roles in the package's 36 plays


def test_shakespeare_roles_are_one_device_each_and_lora_roles_are_unseen_in_pretraining() -> None:
    roles = shakespeare._shuffled_roles(0)
    federated = {r.name for r in roles[:16]}
    pretraining = {r.name for r in roles[-shakespeare.PRETRAIN_ROLES :]}
    assert len(federated) == 16 and federated.isdisjoint(pretraining)
    assert all(len(r.text) >= shakespeare.MIN_ROLE_CHARS for r in roles)


def test_loaders_are_deterministic_and_validate() -> None:
    a, b = get_workload("health", 3, seed=1), get_workload("health", 3, seed=1)
    assert all((xa == xb).all() for (xa, _), (xb, _) in zip(a.device_data, b.device_data))
    assert np.array_equal(a.federated_model().get_flat(), b.federated_model().get_flat())
    with pytest.raises(ConfigError):
        get_workload("mnist")
    with pytest.raises(ConfigError):
        get_workload("shakespeare", 10_000)


def fedavg(workload: Workload, rounds: int) -> tuple[float, float]:
    """Plain FedAvg over all devices, in memory: the metric before and after ``rounds`` rounds."""
    models = [workload.federated_model() for _ in workload.device_data]
    trainers = [
        LocalTrainer(model, x, y, workload.train_config, workload.loss_fn)
        for model, (x, y) in zip(models, workload.device_data)
    ]
    weights = models[0].get_flat()
    initial = workload.evaluate_flat(weights)
    for _ in range(rounds):
        results = [trainer.train(weights) for trainer in trainers]
        total = sum(r.num_examples for r in results)
        weights = weights + sum(r.delta * (r.num_examples / total) for r in results)
    return initial, workload.evaluate_flat(weights)


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_short_federated_run_improves_the_metric(name: str) -> None:
    workload = get_workload(name, SMALL_FLEET[name], seed=0)
    initial, final = fedavg(workload, rounds=3)
    if workload.higher_is_better:
        assert final > initial + 0.1, (initial, final)
    else:
        assert final < initial, (initial, final)


def test_lora_upload_is_at_most_five_percent_of_full_fine_tuning() -> None:
    workload = get_workload("shakespeare-lora", 2, seed=0)
    lora = workload.federated_model()
    full = FederatedModel(shakespeare.CharTransformer())
    assert lora.dim <= 0.05 * full.dim, (lora.dim, full.dim)
    assert all(name.endswith(("lora_A", "lora_B")) for name in lora.federated_names)


def test_central_baseline_beats_chance() -> None:
    workload = get_workload("health", 3, seed=0)
    assert workload.central_baseline(epochs=10) > 0.9


def test_local_optimizer_is_validated_and_sgd_stays_the_default() -> None:
    assert TrainConfig().optimizer == "sgd"
    with pytest.raises(ConfigError) as excinfo:
        TrainConfig(optimizer="adam")
    assert excinfo.value.field == "optimizer"


def test_adamw_local_training_moves_lora_adapters() -> None:
    workload = get_workload("shakespeare-lora", 2, seed=0)
    assert workload.train_config.optimizer == "adamw"
    (x, y), model = workload.device_data[0], workload.federated_model()
    result = LocalTrainer(model, x, y, workload.train_config, workload.loss_fn).train(model.get_flat())
    assert np.isfinite(result.delta).all() and np.linalg.norm(result.delta) > 0.01


def test_full_finetune_reference_trains_every_parameter() -> None:
    full = get_workload("shakespeare-full", 2, seed=0).federated_model()
    assert full.dim == FederatedModel(shakespeare.CharTransformer()).dim
