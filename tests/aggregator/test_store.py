"""The aggregator's durable store, without a broker: journal, rounds, snapshots, crash leftovers."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.store import Store
from shared.errors import StoreError


def test_journal_records_each_frame_once_in_arrival_order(tmp_path):
    store = Store(tmp_path)
    assert store.journal(3, "dev-1", "update", -1, "t/a", b"first")
    assert store.journal(3, "dev-2", "update", 0, "t/b", b"second")
    assert not store.journal(3, "dev-1", "update", -1, "t/a", b"again")  # same (round, sender, kind, part)
    assert store.journal(4, "dev-1", "update", -1, "t/c", b"next round")
    assert store.frames(3) == [("t/a", b"first"), ("t/b", b"second")]
    store.prune_journal(4)
    assert store.frames(3) == [] and store.frames(4) == [("t/c", b"next round")]
    store.close()


def test_rounds_survive_a_reopen_and_keep_their_noise(tmp_path):
    store = Store(tmp_path)
    assert store.last_round() is None
    store.open_round(0, 0, 10.0, 40.0)
    store.finish_round(0, "closed", 5, noise=1.25)
    store.open_round(1, 1, 50.0, 80.0)
    store.finish_round(1, "abandoned", 1, "1 updates < min_clients 2")
    store.open_round(2, 1, 90.0, 120.0)
    store.close()
    again = Store(tmp_path)
    last = again.last_round()
    assert last is not None and (last.round_id, last.status, last.base_version) == (2, "open", 1)
    assert [(r.round_id, r.status, r.contributors) for r in again.rounds()] == [
        (0, "closed", 5), (1, "abandoned", 1), (2, "open", 0)
    ]  # fmt: skip
    assert again.rounds()[1].reason == "1 updates < min_clients 2"
    assert again.noise_history() == [1.25]  # only closed rounds that released a noisy sum
    with pytest.raises(StoreError, match="status"):
        again.finish_round(2, "maybe", 0)
    again.close()


def test_snapshots_are_written_once_and_read_back_with_optimizer_state(tmp_path):
    store = Store(tmp_path)
    assert store.latest_snapshot() is None
    momentum = np.linspace(-1, 1, 7, dtype=np.float32)
    store.write_snapshot(0, -1, b"v0 bytes", {})
    store.write_snapshot(1, 0, b"v1 bytes", {"m": momentum})
    with pytest.raises(StoreError, match="already exists"):
        store.write_snapshot(1, 0, b"other", {})
    latest = store.latest_snapshot()
    assert latest is not None and (latest.version, latest.round_id, latest.snapshot) == (1, 0, b"v1 bytes")
    assert np.array_equal(latest.optimizer["m"], momentum)
    assert store.versions() == [0, 1]
    store.close()


def test_a_crash_mid_write_leaves_no_partial_snapshot_and_bad_files_are_typed_errors(tmp_path):
    store = Store(tmp_path)
    store.write_snapshot(0, -1, b"v0", {})
    store.close()
    (tmp_path / "snapshots" / "model-v00000001.partial").write_bytes(b"half a snaps")
    again = Store(tmp_path)
    assert not list((tmp_path / "snapshots").glob("*.partial"))
    assert again.latest_snapshot().version == 0  # type: ignore[union-attr]
    (tmp_path / "snapshots" / "model-v00000002.fedmq").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(StoreError, match="unreadable"):
        again.latest_snapshot()
    again.close()
