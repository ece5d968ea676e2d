"""The README's operator journey, through the CLIs only, as subprocesses.

``fedmq init`` with the operator's own model file, ``fedmq enroll`` of three devices, a Mosquitto started
from the rendered config (TLS listener, password accounts, the shipped ACL), ``fedmq-aggregator`` and
``fedmq-edge`` from the config files ``init``/``enroll`` wrote (passwords only in files), secure rounds
closing; then a fourth device enrolled and one revoked while it runs, rounds still closing with the new
device; ``fedmq status`` and ``fedmq export`` reading the result; SIGTERM ends every process.
"""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedmq_admin.export import read_safetensors
from fedmq_admin.status import participation, rounds
from simulator.broker import find_mosquitto
from simulator.process import die_with_parent, free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
#: Generous: four torch processes start on a loaded 2-core machine.
DEADLINE_S = 240

MODEL = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def evaluate(tensors):
    from simulator.data import load_digits_split

    model = build()
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in tensors.items()})
    split = load_digits_split()
    with torch.no_grad():
        predicted = model(torch.from_numpy(split.x_test)).argmax(dim=1).numpy()
    return float((predicted == split.y_test).mean())
'''


def fedmq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "fedmq_admin", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def spawn(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            preexec_fn=die_with_parent)  # fmt: skip


def wait_for(condition, what: str, timeout: float = DEADLINE_S, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for proc, log in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{log.name} exited {proc.returncode} while waiting for {what}:\n"
                                     + log.read_text()[-3000:])  # fmt: skip
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def closed_rounds(store: Path) -> list[dict]:
    try:
        return [r for r in rounds(store, last=1000) if r["status"] == "closed"]
    except Exception:
        return []


def device_data(work: Path, shard: int, shards: int) -> Path:
    """The device's own data, as an operator would have it: an .npz with x and y."""
    from simulator.data import dirichlet_partition, load_digits_split

    split = load_digits_split()
    rows = dirichlet_partition(split.y_train, shards, seed=0)[shard]
    path = work / f"data-{shard}.npz"
    np.savez(path, x=split.x_train[rows], y=split.y_train[rows])
    return path


def provision(fed: Path, device: str, data: Path) -> Path:
    """What the operator does to a bundle: point [training] at the model and the device's data."""
    config = fed / "devices" / device / "device.toml"
    text = config.read_text().replace(
        "[training]\n", f'[training]\nmodel = "mynet:build"\ndata = "{data}"\nepochs = 2\n'
    )
    config.write_text(text)
    return config


def test_operator_journey_through_the_clis(tmp_path):
    work = tmp_path
    (work / "mynet.py").write_text(MODEL)
    port = free_port()
    fed = work / "fed"
    done = fedmq("init", "--dir", "fed", "--federation", "acme", "--host", "localhost", "--port", str(port),
                 "--bind", "127.0.0.1", "--model", "mynet:build", cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr
    devices = ["dev-0", "dev-1", "dev-2"]
    done = fedmq("enroll", "--dir", "fed", *devices, cwd=work)
    assert done.returncode == 0, done.stderr
    conf = (fed / "broker" / "mosquitto.conf").read_text()
    assert "certfile" in conf and "password_file" in conf and "allow_anonymous false" in conf

    # The aggregator's settings: a few round settings from the environment, none in argv.
    env = {**os.environ, "FEDMQ_ROUNDS_MIN_CLIENTS": "2", "FEDMQ_ROUNDS_TARGET_CLIENTS": "3",
           "FEDMQ_ROUNDS_MASKED_WINDOW": "30", "FEDMQ_ENROLMENT_ADDITION_GRACE": "2"}  # fmt: skip
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    broker = subprocess.Popen([find_mosquitto(), "-c", str(fed / "broker" / "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=die_with_parent)  # fmt: skip
    try:
        for i, device in enumerate(devices):
            config = provision(fed, device, device_data(work, i, 4))
            log = work / f"{device}.log"
            procs[device] = (spawn([PY, "-m", "edge_client", "--config", str(config)], work, log), log)
        log = work / "aggregator.log"
        agg = subprocess.Popen(
            [PY, "-m", "aggregator", "--config", str(fed / "aggregator" / "aggregator.toml")],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
            preexec_fn=die_with_parent,
        )  # fmt: skip
        procs["aggregator"] = (agg, log)
        store = fed / "aggregator" / "store"
        running = lambda: [p for name, p in procs.items() if name != "dev-1"]  # noqa: E731
        wait_for(lambda: len(closed_rounds(store)) >= 2, "two secure rounds", procs=running())

        # Grow and shrink the live fleet: enrol dev-3 (new broker account: reload the broker), revoke dev-1.
        done = fedmq("enroll", "--dir", "fed", "dev-3", cwd=work)
        assert done.returncode == 0, done.stderr
        broker.send_signal(signal.SIGHUP)
        config = provision(fed, "dev-3", device_data(work, 3, 4))
        procs["dev-3"] = (spawn([PY, "-m", "edge_client", "--config", str(config)], work, work / "dev-3.log"),
                          work / "dev-3.log")  # fmt: skip
        done = fedmq("revoke", "--dir", "fed", "dev-1", cwd=work)
        assert done.returncode == 0, done.stderr
        revoked = procs["dev-1"][0]
        revoked.wait(timeout=60)
        assert revoked.returncode == 9, procs["dev-1"][1].read_text()[-2000:]
        assert "was revoked" in procs["dev-1"][1].read_text()
        after = max(r["round"] for r in closed_rounds(store))
        dev1_rounds = participation(store)["devices"]["dev-1"]["rounds"]

        def grown() -> bool:
            later = [r for r in closed_rounds(store) if r["round"] > after]
            ledger = participation(store)["devices"]
            return len(later) >= 3 and ledger.get("dev-3", {}).get("rounds", 0) >= 1

        wait_for(grown, "rounds with dev-3 after the revocation", procs=running())
        assert len(closed_rounds(store)) >= 5

        status = fedmq("status", "--dir", "fed", "--json", cwd=work)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["devices"]["dev-3"]["enrolled"] and report["devices"]["dev-3"]["rounds"] >= 1
        assert report["devices"]["dev-3"]["online"] and report["ledger_updated_at"] > 0
        assert not report["devices"]["dev-1"]["enrolled"] and not report["devices"]["dev-1"]["online"]
        assert report["devices"]["dev-1"]["rounds"] == dev1_rounds  # no contribution after revocation
        assert report["devices"]["dev-0"]["bytes_in"] > 0
        assert report["rounds_closed"] >= 5

        export = fedmq("export", "--dir", "fed", "--out", str(work / "model.safetensors"), cwd=work)
        assert export.returncode == 0, export.stderr
        tensors, meta = read_safetensors(work / "model.safetensors")
        assert sorted(tensors) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        assert tensors["0.weight"].shape == (32, 64) and meta["federation"] == "acme"
        import torch

        sys.path.insert(0, str(work))
        from mynet import build

        model = build()
        before = model.state_dict()["0.weight"].clone()
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
        assert not torch.equal(before, model.state_dict()["0.weight"])  # the trained model, not the initial

        out = str(work / "report.html")
        report = fedmq("report", "--dir", "fed", "--out", out, "--eval", "mynet:evaluate", cwd=work)
        assert report.returncode == 0, report.stderr
        page = (work / "report.html").read_text()
        assert "Evaluation score by round" in page and "dev-3" in page
        data = json.loads(html.unescape(page.split("id='data'>")[1].split("</script>")[0]))
        scores = [score for _, _, score in data["scores"]]
        assert len(scores) >= 3 and all(0.0 <= s <= 1.0 for s in scores)
        assert max(scores) > 0.5  # ten-class digits: the federated model learnt (chance is 0.1)

        # SIGTERM: every process ends cleanly, within 5 s.
        live = {name: p for name, p in procs.items() if p[0].poll() is None}
        assert set(live) == {"aggregator", "dev-0", "dev-2", "dev-3"}
        for proc, _ in live.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for name, (proc, log) in live.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} still running 5 s after SIGTERM") from None
            assert proc.returncode == 0, f"{name}: {log.read_text()[-2000:]}"
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        broker.terminate()
        broker.wait(timeout=10)
