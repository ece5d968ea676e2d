"""The test broker never outlives the process that started it, however that process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_STARTER = """
import sys, time
from pathlib import Path
from simulator.broker import MosquittoBroker
broker = MosquittoBroker(Path(sys.argv[1])).start()
print(broker.process.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent, now init, reaps it soon).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.broker
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_broker_dies_with_the_process_that_started_it(tmp_path, how):
    with subprocess.Popen(  # leaving the block closes its stdout pipe and reaps it
        [sys.executable, "-c", _STARTER, str(tmp_path / "broker")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    ) as starter:
        try:
            assert starter.stdout is not None
            pid = int(starter.stdout.readline())
            assert _alive(pid)
            starter.send_signal(how)  # no close(), no fixture teardown: the test run itself dying
            starter.wait(timeout=10)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(pid), f"mosquitto {pid} outlived its parent ({how.name})"
        finally:
            if starter.poll() is None:
                starter.kill()
