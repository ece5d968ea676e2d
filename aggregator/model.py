"""Where the aggregator's model comes from at start-up: the store's newest snapshot, or the initial one.

Pure of MQTT: reads the store (and the initial file), never publishes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.store import Store
from shared.dp import DPConfig, PrivacyAccountant
from shared.errors import StoreError
from shared.layout import ModelLayout
from shared.snapshots import make_snapshot, read_initial, snapshot_weights
from shared.wire import ModelSnapshot, decode

log = logging.getLogger("aggregator.engine")


@dataclass(frozen=True)
class LoadedModel:
    snapshot: ModelSnapshot
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    #: False: a fresh start from the initial model (the caller stores it as v0).
    stored: bool = True


def load_snapshot(
    store: Store,
    initial: Path | ModelSnapshot | None,
    *,
    config: AggregatorConfig,
    key: nacl.signing.SigningKey,
) -> LoadedModel:
    """Resume from the newest stored snapshot, else re-issue ``initial`` as our own signed v0 in the
    configured downlink encoding; StoreError when there is neither."""
    stored = store.latest_snapshot()
    if stored is not None:
        snapshot = decode(stored.snapshot, ModelSnapshot)
        log.info("resuming from stored snapshot v%d (round %d)", snapshot.version, snapshot.round_id)
        return LoadedModel(snapshot, stored.optimizer)
    if initial is None:
        raise StoreError(f"no snapshot in {store.directory} and no initial model given")
    first = initial if isinstance(initial, ModelSnapshot) else read_initial(initial)
    layout = ModelLayout.from_wire(first.layout)
    snapshot = make_snapshot(config.federation, 0, -1, layout, snapshot_weights(first), key,
                             encoding=config.snapshot_encoding)  # fmt: skip
    log.info("starting from initial snapshot (%d parameters)", layout.dim)
    return LoadedModel(snapshot, {}, stored=False)


def restore_accountant(store: Store, dp: DPConfig) -> PrivacyAccountant | None:
    """The privacy spent so far, from the noise of every closed round in the store (None: no rounds)."""
    history = [(sigma, dp.sampling_q) for sigma in store.noise_history()]
    if not history or dp.delta is None:
        return None
    accountant = PrivacyAccountant.from_history(dp.delta, dp.sampling_q, history)
    log.info("privacy accountant restored: %d rounds, epsilon %.4f", len(history), accountant.epsilon())
    return accountant
