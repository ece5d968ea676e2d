"""Tabular workloads from regulated domains: health (real, bundled) and finance (generated, synthetic)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge_client.architectures import DEFAULTS
from simulator.data import dirichlet_partition
from simulator.workloads import Workload, seeded_module

HEALTH_DEFAULT_DEVICES = 5
HEALTH_ALPHA = 1.0
#: 569 patients, 20% held out (stratified)
HEALTH_TRAIN_EXAMPLES = 455
HEALTH_TEST_EXAMPLES = 114

FINANCE_DEFAULT_DEVICES = 10
FINANCE_ALPHA = 0.5
#: the generator's seed is fixed, so every run sees the same synthetic population
FINANCE_DATA_SEED = 2024
FINANCE_SAMPLES = 4000
FINANCE_TRAIN_EXAMPLES = 3200
FINANCE_TEST_EXAMPLES = 800
FINANCE_DEFAULT_RATE = 0.1


def _tabular_workload(
    name: str,
    description: str,
    x: np.ndarray,
    y: np.ndarray,
    n_devices: int,
    alpha: float,
    hidden: int,
    seed: int,
) -> Workload:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    # Standardised with the pooled training statistics. A deployment computes these with one secure
    # sum of per-site counts, sums and sums of squares before training; the simulator takes the result.
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    x_train = ((x_train - mean) / std).astype(np.float32)
    x_test = ((x_test - mean) / std).astype(np.float32)
    parts = dirichlet_partition(y_train, n_devices, alpha=alpha, seed=seed, min_size=10)
    features = x.shape[1]

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    return Workload(
        name=name,
        description=description,
        model_factory=lambda: seeded_module(seed, build),
        device_data=[(xt[idx], yt[idx]) for idx in map(torch.from_numpy, parts)],
        test_data=(torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))),
        loss_fn=nn.functional.cross_entropy,
        metric="accuracy",
        train_config=DEFAULTS["mlp"].train_config(epochs=2, batch_size=16, lr=0.05, seed=seed),
        central_epochs=30,
    )


def load_health_workload(n_devices: int = HEALTH_DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """Breast-cancer diagnosis (Wisconsin, bundled with scikit-learn) across ``n_devices`` "hospitals".

    Sites differ in case mix the way referral centres and screening clinics do: the share of malignant
    cases per site is drawn Dirichlet(1.0) over the two labels, every site keeps at least 10 patients.
    455 training patients in total over the sites, 114 test patients; 30 standardised features; MLP
    30-16-2 (530 parameters).
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return _tabular_workload(
        "health",
        f"sklearn breast cancer, {n_devices} hospitals, Dirichlet({HEALTH_ALPHA}) case mix, MLP",
        data.data,
        data.target,
        n_devices,
        HEALTH_ALPHA,
        hidden=16,
        seed=seed,
    )


def synthetic_credit_default() -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC credit-default data: no real borrowers. ``make_classification`` with 4,000 applicants,
    20 features (8 informative, 4 redundant), 10% defaults (label 1), 1% label noise, fixed seed 2024.

    It stands in for a credit or fraud table because no such real data ships offline with our
    dependencies; it has the property that matters here, a strong class imbalance.
    """
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=FINANCE_SAMPLES,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        weights=[1 - FINANCE_DEFAULT_RATE, FINANCE_DEFAULT_RATE],
        flip_y=0.01,
        class_sep=1.0,
        random_state=FINANCE_DATA_SEED,
    )
    return x, y


def load_finance_workload(n_devices: int = FINANCE_DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """Synthetic credit default (:func:`synthetic_credit_default`) across ``n_devices`` lenders.

    Split Dirichlet(0.5) over the label, so some lenders see almost no defaults. 3,200 training
    applicants in total, 800 test; MLP 20-32-2 (738 parameters). Metric: accuracy; ``scores`` also
    reports balanced accuracy, which a majority-class model cannot fake.
    """
    x, y = synthetic_credit_default()
    return _tabular_workload(
        "finance",
        f"SYNTHETIC credit default (make_classification, 10% defaults), {n_devices} lenders, MLP",
        x,
        y,
        n_devices,
        FINANCE_ALPHA,
        hidden=32,
        seed=seed,
    )
