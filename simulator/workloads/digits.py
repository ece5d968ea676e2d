"""Vision: scikit-learn's bundled 8x8 digits with a small CNN, label-skewed across devices."""

from __future__ import annotations

import torch
from torch import nn

from edge_client.architectures import DEFAULTS
from edge_client.trainer import TrainConfig
from simulator.data import dirichlet_partition, load_digits_split
from simulator.workloads import Workload, seeded_module

DEFAULT_DEVICES = 10
ALPHA = 0.5
#: 1,797 images, 20% held out (stratified): these many are spread over the devices / kept for testing.
TRAIN_EXAMPLES = 1437
TEST_EXAMPLES = 360


def digits_cnn() -> nn.Module:
    """1x8x8 -> conv16 -> pool -> conv32 -> pool -> 10 (6,090 parameters, blocks "0", "3", "7")."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def load_digits_workload(n_devices: int = DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """Digits split Dirichlet(0.5) over labels (Hsu et al. 2019) across ``n_devices`` devices.

    1,437 training images in total (every one on exactly one device), 360 test images.
    """
    split = load_digits_split(seed=seed)
    parts = dirichlet_partition(split.y_train, n_devices, alpha=ALPHA, seed=seed)
    x = torch.from_numpy(split.x_train).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(split.y_train)
    return Workload(
        name="digits",
        description=f"sklearn digits, {n_devices} devices, Dirichlet({ALPHA}) label skew, small CNN",
        model_factory=lambda: seeded_module(seed, digits_cnn),
        device_data=[(x[idx], y[idx]) for idx in map(torch.from_numpy, parts)],
        test_data=(torch.from_numpy(split.x_test).reshape(-1, 1, 8, 8), torch.from_numpy(split.y_test)),
        loss_fn=nn.functional.cross_entropy,
        metric="accuracy",
        train_config=DEFAULTS["cnn"].train_config(epochs=2, batch_size=16, lr=0.05, seed=seed),
        central_epochs=30,
    )


def load_digits_mlp_workload(n_devices: int = 20, seed: int = 0) -> Workload:
    """The demo's task: the same digits split across ``n_devices`` with the 4,810-parameter MLP
    (:func:`simulator.models.digits_mlp`), 5 local epochs of SGD (lr 0.1, momentum 0.9, batch 16)."""
    from simulator.models import digits_mlp

    split = load_digits_split(seed=seed)
    parts = dirichlet_partition(split.y_train, n_devices, alpha=ALPHA, seed=seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    return Workload(
        name="digits-mlp",
        description=f"sklearn digits, {n_devices} devices, Dirichlet({ALPHA}) label skew, MLP 64-64-10",
        model_factory=lambda: digits_mlp(seed=seed),
        device_data=[(x[idx], y[idx]) for idx in map(torch.from_numpy, parts)],
        test_data=(torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)),
        loss_fn=nn.functional.cross_entropy,
        metric="accuracy",
        train_config=TrainConfig(epochs=5, lr=0.1, momentum=0.9, batch_size=16, seed=seed),
        central_epochs=60,
    )
