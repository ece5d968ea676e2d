"""The demo's digits task with a ~1.1M-parameter MLP, so per-round protocol costs are amortised.

Secure aggregation costs every device a few kilobytes per round that do not depend on the model size
(advertised keys, sealed Shamir share bundles, unmask reveals, MQTT framing: about 5 KB at 20 devices).
On the 4,810-parameter demo MLP that is about 1 byte per coordinate, half as much again as the 16-bit
payload; on this model it is about 0.005 bytes per coordinate (0.24% of the 16-bit payload), as on real
models. Used by ``benchmarks/compression.py --task digits-wide`` for issue 4's bytes-per-coordinate targets.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_client.trainer import TrainConfig
from simulator.data import dirichlet_partition, load_digits_split
from simulator.models import digits_wide_mlp
from simulator.workloads import Workload
from simulator.workloads.digits import ALPHA

DEFAULT_DEVICES = 20
HIDDEN = 1024
#: Parameters of :func:`simulator.models.digits_wide_mlp` at ``HIDDEN``: 64*1024 + 1024 + 1024*1024 +
#: 1024 + 1024*10 + 10.
PARAMETERS = 1_126_410


def load_digits_wide_workload(n_devices: int = DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """The digits-mlp split (same images, same Dirichlet(0.5) partition for the same ``n_devices`` and
    ``seed``) with the MLP 64-1024-1024-10 (:data:`PARAMETERS` parameters).

    Local training: 5 epochs of SGD (lr 0.05, momentum 0.9, batch 16), half the small MLP's lr: local
    update norms then stay <= ~5.3 in the first three rounds and <= ~2.3 from round 4 (at lr 0.1 some
    reach ~12, so a clip of 5 would bind), and 20 rounds of plain FedAvg reach ~0.96 as the small MLP does.
    """
    split = load_digits_split(seed=seed)
    parts = dirichlet_partition(split.y_train, n_devices, alpha=ALPHA, seed=seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    return Workload(
        name="digits-wide",
        description=f"sklearn digits, {n_devices} devices, Dirichlet({ALPHA}) label skew, "
        f"MLP 64-{HIDDEN}-{HIDDEN}-10",
        model_factory=lambda: digits_wide_mlp(HIDDEN, seed=seed),
        device_data=[(x[idx], y[idx]) for idx in map(torch.from_numpy, parts)],
        test_data=(torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)),
        loss_fn=nn.functional.cross_entropy,
        metric="accuracy",
        train_config=TrainConfig(epochs=5, lr=0.05, momentum=0.9, batch_size=16, seed=seed),
        central_epochs=30,
    )
