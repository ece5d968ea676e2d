"""The deployment path: `fedmq-aggregator` and three `fedmq-edge` processes in secure mode, enrolled
through key and directory files, over a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.store import Store
from edge_client.model import FederatedModel
from shared.signing import load_or_create_key
from shared.snapshots import make_snapshot, write_initial
from simulator.models import digits_mlp

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]


def test_aggregator_and_edge_clis_run_secure_rounds(broker, tmp_path):
    ids = [f"dev-{i}" for i in range(3)]
    directory = {cid: bytes(load_or_create_key(tmp_path / f"{cid}.key").verify_key).hex() for cid in ids}
    (tmp_path / "enrolled.json").write_text(json.dumps(directory))
    aggregator_key = load_or_create_key(tmp_path / "agg" / "aggregator.key")
    model = FederatedModel(digits_mlp())
    write_initial(tmp_path / "initial.fedmq", make_snapshot("demo", 0, -1, model.layout, model.get_flat()))
    python = sys.executable
    edges = [
        subprocess.Popen(
            [
                python,
                "-m",
                "edge_client",
                "--broker",
                broker.url,
                "--client-id",
                cid,
                "--aggregator-key",
                bytes(aggregator_key.verify_key).hex(),
                "--identity",
                str(tmp_path / f"{cid}.key"),
                "--directory",
                str(tmp_path / "enrolled.json"),
                "--task",
                "digits",
                "--shard",
                str(i),
                "--shards",
                "3",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, cid in enumerate(ids)
    ]
    try:
        aggregator = subprocess.run(
            [python, "-m", "aggregator", "--broker", broker.url, "--store", str(tmp_path / "agg"),
             "--initial", str(tmp_path / "initial.fedmq"), "--directory", str(tmp_path / "enrolled.json"),
             "--rounds", "2", "--window", "60", "--min-clients", "3", "--target-clients", "3"],
            cwd=REPO, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        for edge in edges:
            edge.terminate()
            edge.wait(timeout=10)
    log = aggregator.stderr.decode()
    assert aggregator.returncode == 0, log[-2000:]
    store = Store(tmp_path / "agg")
    try:
        # The keys window (5 s) may close round 0 before the slower edge processes are up: what matters
        # is that secure rounds with all three enrolled devices close and the model moves on.
        closed = [r for r in store.rounds() if r.status == "closed"]
        assert closed and all(r.contributors == 3 for r in closed), store.rounds()
        assert store.versions()[-1] == len(closed)
    finally:
        store.close()
