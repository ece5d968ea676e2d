"""Snapshot retention: keep the newest ``keep`` snapshot files of a store, delete older ones.

Why: the store writes one file per model version and never deleted any, so a long-running federation
filled its disk. Recovery only ever reads the newest file, and versions never repeat, so deleting the
oldest after each round is safe; ``keep`` > 1 leaves earlier models for rollback or audit.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aggregator.store import Store
from shared.errors import ConfigError

log = logging.getLogger(__name__)


def prune_snapshots(store: Store, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` snapshot files; returns the deleted versions."""
    if keep < 1:
        raise ConfigError("retention.keep_snapshots", "must be >= 1")
    versions = store.versions()
    doomed = versions[:-keep]
    for version in doomed:
        path: Path = store.snapshot_dir / f"model-v{version:08d}.fedmq"
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not delete old snapshot %s: %s", path, exc)
    return doomed
