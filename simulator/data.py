"""Offline data for the simulator: scikit-learn's bundled digits, split non-IID across devices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """8x8 digits (1,797 images, bundled with scikit-learn, no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Split(x_train, y_train, x_test, y_test)


def dirichlet_partition(
    labels: np.ndarray, n_clients: int, alpha: float = 0.5, seed: int = 0, min_size: int = 5
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients by Dirichlet(alpha) proportions
    (Hsu et al. 2019). Smaller alpha means more skew. Redrawn until every client has ``min_size``."""
    if n_clients < 1:
        raise ValueError("n_clients must be >= 1")
    if n_clients * min_size > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {n_clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(n_clients)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                shards[client].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"could not draw a Dirichlet({alpha}) split with {min_size} examples per client")


def digits_shard(shard: int, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """Device ``shard`` of ``shards``'s training data (Dirichlet label skew, seed 0): the edge CLI's
    ``--task digits``."""
    split = load_digits_split()
    index = dirichlet_partition(split.y_train, shards, seed=0)[shard]
    return split.x_train[index], split.y_train[index]
