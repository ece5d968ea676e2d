"""Summing workers in the product (``summing_workers = 2``) over a real Mosquitto with the shipped ACL plus
the worker accounts ``fedmq init --summing-workers`` generates: exact sums, a worker killed mid-round,
SIGTERM stopping the aggregator and its workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.secure import PhaseWindows
from aggregator.summing import SummingPool, worker_account
from fedmq_admin.broker import acl_rules
from shared.codec import CodecConfig
from shared.layout import ModelLayout
from shared.signing import load_or_create_key
from shared.snapshots import make_snapshot, write_initial
from shared.supervision import SupervisionError, Supervisor
from simulator.broker import PRODUCTION_AUTH, MosquittoBroker
from simulator.light import LightDevice, device_key, device_name
from tests.support import eventually, mqtt_config

pytestmark = pytest.mark.broker
FED = "sum"
DEVICES = 8
DIM = 3000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def accounts():
    users = [device_name(i) for i in range(DEVICES)] + ["aggregator"]
    users += [worker_account("aggregator", i) for i in range(2)]
    shared = secrets.token_hex(8)  # the workers' accounts carry the aggregator's password
    return {user: shared if user.startswith("aggregator") else secrets.token_hex(8) for user in users}


@pytest.fixture
def acl_broker(tmp_path, accounts):
    """The shipped ACL plus the worker lines, as ``fedmq init --summing-workers 2`` writes it."""
    broker = MosquittoBroker.with_accounts(accounts, tmp_path / "broker", federation=FED)
    acl = broker.workdir / "acl"
    acl.write_text(acl_rules(summing_workers=2, federation=FED))
    broker.auth = PRODUCTION_AUTH.format(passwd=broker.workdir / "passwd", acl=acl)
    broker.start()
    yield broker
    broker.stop()


def directory() -> dict[str, bytes]:
    return {device_name(i): bytes(device_key(i).verify_key) for i in range(DEVICES)}


def agg_config(broker, accounts, tmp_path, **kw) -> AggregatorConfig:
    values = {
        "federation": FED, "store_dir": tmp_path / "agg", "directory": directory(),
        "mqtt": mqtt_config(broker, "aggregator", username="aggregator", password=accounts["aggregator"]),
        "codec": CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        "windows": PhaseWindows(keys=20.0, shares=20.0, masked=30.0, unmask=20.0),
        "min_clients": 4, "target_clients": DEVICES, "over_selection": 1.0, "summing_workers": 2, **kw,
    }  # fmt: skip
    return AggregatorConfig(**values)


class Quiet(LightDevice):
    """A device that does not send its masked input in round ``silent`` (it dropped out after shares),
    or sends it ``twice`` (the broker may hand the copies to different workers)."""

    silent = -1
    twice = False

    async def _send_masked(self, state, shared) -> None:  # type: ignore[no-untyped-def]
        if shared.round != self.silent:
            await super()._send_masked(state, shared)

    async def _send(self, kind, round_id, message) -> None:  # type: ignore[no-untyped-def]
        await super()._send(kind, round_id, message)
        if kind == "masked" and self.twice:
            await super()._send(kind, round_id, message)


def devices(broker, accounts, agg_key: bytes, chunked: int = -1) -> list[Quiet]:
    return [
        Quiet(federation=FED, identity=device_key(i), aggregator_key=agg_key, directory=directory(),
              mqtt=mqtt_config(broker, device_name(i), username=device_name(i),
                               password=accounts[device_name(i)]),
              dim=DIM, seed=i, keep_encoded=True, chunk_limit=1024 if i == chunked else 256 * 1024)
        for i in range(DEVICES)
    ]  # fmt: skip


def snapshot(key=None):  # type: ignore[no-untyped-def]
    return make_snapshot(FED, 0, -1, ModelLayout.from_shapes([("w", [DIM])]), np.zeros(DIM, np.float32), key)


class Recorder:
    """Each round's unmasked sum and survivors, taken when its result is published."""

    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg
        self.rounds: dict[int, tuple[np.ndarray | None, frozenset[str], str]] = {}

    def __call__(self, result, weights) -> None:  # type: ignore[no-untyped-def]
        secure = self.agg.last_secure
        assert secure is not None and secure.round_id == result.round_id
        survivors = secure.server.masked if secure.server is not None else frozenset()
        total = None if secure.total is None else secure.total.copy()
        self.rounds[result.round_id] = (total, survivors, result.status)


def oracle(fleet: list[Quiet], round_id: int, survivors: frozenset[str], bits: int) -> np.ndarray:
    """The sum of the survivors' encoded (unmasked) vectors modulo 2^bits."""
    total = sum(d.encoded[round_id].astype(np.uint64) for d in fleet if d.client_id in survivors)
    return (np.asarray(total) % (1 << bits)).astype(np.uint32)


@pytest.mark.parametrize("workers", [2, 0])
async def test_two_workers_close_secure_rounds_with_the_exact_sum(acl_broker, accounts, tmp_path, workers):
    """Both ways -- two workers, and in-process as the reference -- give the devices' exact sum."""
    key = load_or_create_key(tmp_path / "agg" / "aggregator.key")
    fleet = devices(acl_broker, accounts, bytes(key.verify_key), chunked=3)
    fleet[5].twice = True  # counted once, whichever worker (or both) verified it
    config = agg_config(acl_broker, accounts, tmp_path, summing_workers=workers)
    async with Aggregator(config, initial=snapshot(key)) as agg:
        recorder = Recorder(agg)
        agg.observers.append(recorder)
        async with contextlib.AsyncExitStack() as stack:
            for device in fleet:
                await stack.enter_async_context(device)
            results = await asyncio.wait_for(agg.run(3), 240)
        pool = agg.summing
        assert (pool is not None) == bool(workers)
        summed = dict(pool.summed) if pool is not None else {}
    assert [r.status for r in results] == ["closed"] * 3, [r.reason for r in results]
    assert all(r.contributors == DEVICES for r in results)
    for result in results:
        total, survivors, _ = recorder.rounds[result.round_id]
        assert total is not None and len(survivors) == DEVICES
        bits = agg.last_secure.config.bits if agg.last_secure and agg.last_secure.config else 0
        np.testing.assert_array_equal(total, oracle(fleet, result.round_id, survivors, bits))
    if workers:  # they summed every unchunked input; device 3's chunked one was reassembled in-process
        assert sum(summed.values()) == 3 * (DEVICES - 1), summed
        assert len(summed) == workers and all(count > 0 for count in summed.values()), summed


async def test_a_worker_killed_mid_round_loses_only_its_inputs(acl_broker, accounts, tmp_path):
    key = load_or_create_key(tmp_path / "agg" / "aggregator.key")
    fleet = devices(acl_broker, accounts, bytes(key.verify_key))
    fleet[0].silent = 0  # keeps round 0's masked phase open until its deadline
    config = agg_config(acl_broker, accounts, tmp_path, dropout_rate=0.45,
                        windows=PhaseWindows(keys=20.0, shares=20.0, masked=12.0, unmask=20.0))  # fmt: skip
    async with Aggregator(config, initial=snapshot(key)) as agg:
        recorder = Recorder(agg)
        agg.observers.append(recorder)
        pool = agg.summing
        assert pool is not None
        killed: list[frozenset[str]] = []

        handle = pool._on_frame

        def kill_worker_0_at_its_first_grant(slot, message):  # type: ignore[no-untyped-def]
            handle(slot, message)
            if slot.index == 0 and slot.granted and not killed:
                killed.append(frozenset(slot.granted))
                os.kill(slot.process.pid, signal.SIGKILL)

        pool._on_frame = kill_worker_0_at_its_first_grant  # type: ignore[method-assign]

        async with contextlib.AsyncExitStack() as stack:
            for device in fleet:
                await stack.enter_async_context(device)
            results = await asyncio.wait_for(agg.run(2), 240)
    first, second = results
    lost = killed[0]
    assert lost and pool.lost and pool.lost[0][0] == first.round_id and lost <= pool.lost[0][1]
    total, survivors, status = recorder.rounds[first.round_id]
    if status == "closed":  # recovered: the lost inputs count as dropouts, the sum is exact without them
        assert not survivors & pool.lost[0][1] and device_name(0) not in survivors
        bits = agg.last_secure.config.bits if agg.last_secure and agg.last_secure.config else 0
        np.testing.assert_array_equal(total, oracle(fleet, first.round_id, survivors, bits))
    else:  # abandoned with the cause: too many inputs lost to unmask
        assert "cannot be unmasked" in first.reason, first.reason
    # The worker was restarted: the next round closes with every device, exactly.
    assert second.status == "closed" and second.contributors == DEVICES, second.reason
    total, survivors, _ = recorder.rounds[second.round_id]
    bits = agg.last_secure.config.bits if agg.last_secure and agg.last_secure.config else 0
    np.testing.assert_array_equal(total, oracle(fleet, second.round_id, survivors, bits))


async def test_a_close_cancelled_midway_still_stops_every_worker(acl_broker, accounts, tmp_path):
    """The aggregator's supervisor cancels the pool's task at shutdown, maybe while the pool is already
    closing (after a broker refused the workers): the close still runs to the end. Cut short, it left the
    workers running and their supervisors pending until the event loop shut down, and their subprocess
    transports were finalized after the loop had closed (PytestUnraisableExceptionWarning)."""
    pool = SummingPool(agg_config(acl_broker, accounts, tmp_path), relay=lambda topic, payload: None,
                       refused=lambda sender, rule, reason, round_id: None)  # fmt: skip
    running = asyncio.create_task(pool.run(Supervisor("test")))
    try:
        await asyncio.wait_for(pool.wait_started(), 120)
        processes = [slot.process for slot in pool.slots]
        assert len(processes) == 2 and all(p is not None and p.returncode is None for p in processes)
        running.cancel()  # the pool starts closing...
        await eventually(lambda: pool._closing, 10, interval=0, what="the close under way")
        running.cancel()  # ...and is cancelled again while it waits for the workers to leave
        with pytest.raises(asyncio.CancelledError):
            await running
        assert all(p is not None and p.returncode is not None for p in processes)  # both workers are gone
        assert all(task.done() for task in pool._tasks)  # and their supervisors ended with them
    finally:
        running.cancel()
        await pool.close()


@pytest.mark.parametrize("broker", ["nats"], indirect=True)
async def test_a_broker_without_shared_subscriptions_is_refused_with_one_line(broker, tmp_path):
    """NATS speaks MQTT 3.1.1 with no ``$share``: the aggregator ends with the cause, no round runs."""
    config = AggregatorConfig(
        federation=FED, mqtt=mqtt_config(broker, "aggregator"), store_dir=tmp_path / "agg",
        directory=directory(), summing_workers=2,
    )  # fmt: skip
    async with Aggregator(config, initial=snapshot()) as agg:
        with pytest.raises(SupervisionError, match="no MQTT 5 shared subscriptions") as refused:
            await asyncio.wait_for(agg.run(1), 120)
        assert not [r for r in agg.results if r.status == "closed"]  # rounds wait for the workers
    assert "\n" not in str(refused.value) and "summing_workers = 0" in str(refused.value)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_aggregator_and_its_workers(acl_broker, accounts, tmp_path):
    (tmp_path / "directory.json").write_text(json.dumps({k: v.hex() for k, v in directory().items()}))
    write_initial(tmp_path / "initial.fedmq", snapshot())
    url = f"mqtt://aggregator:{accounts['aggregator']}@127.0.0.1:{acl_broker.port}"
    # Its log (and its workers') goes to a file: an unread pipe could fill up and stall them.
    with (tmp_path / "aggregator.log").open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--broker", url, "--store", str(tmp_path / "agg"),
             "--initial", str(tmp_path / "initial.fedmq"),
             "--directory", str(tmp_path / "directory.json"), "--summing-workers", "2"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        workers: set[int] = set()

        async def both_workers_connected() -> None:
            def check() -> bool:
                workers.update(_children(process.pid))
                log = acl_broker.log_file.read_text() if acl_broker.log_file.exists() else ""
                return all(f"as {worker_account('aggregator', i)} " in log for i in range(2))

            await eventually(check, 120, what="both summing workers connected")

        asyncio.run(both_workers_connected())
        assert len(workers) == 2, workers
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / "aggregator.log").read_text()[-2000:]
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


async def test_a_dealer_excluded_with_workers_leaves_the_exact_honest_sum(tmp_path, digits):
    """Self-healing SecAgg+ with summing workers: the rogue's input, summed by a worker, is taken back out
    of the sum from the payload the worker handed over with its claim (as the in-process path keeps it)."""
    from tests.adversarial.test_secagg_self_healing import ROGUE, RogueClient
    from tests.support import directory_of, enrol, initial_weights, run_rounds, secure_devices

    keys = enrol(7)
    shared = secrets.token_hex(8)
    accounts = {user: secrets.token_hex(8) for user in keys}
    accounts |= {
        user: shared
        for user in ["aggregator", worker_account("aggregator", 0), worker_account("aggregator", 1)]
    }
    broker = MosquittoBroker.with_accounts(accounts, tmp_path / "broker", federation=FED)
    (broker.workdir / "acl").write_text(acl_rules(summing_workers=2, federation=FED))
    broker.auth = PRODUCTION_AUTH.format(passwd=broker.workdir / "passwd", acl=broker.workdir / "acl")
    broker.start()
    try:

        def creds(user: str):  # type: ignore[no-untyped-def]
            return mqtt_config(broker, user, username=user, password=accounts[user])

        model, weights = initial_weights()
        cfg = AggregatorConfig(
            federation=FED, mqtt=creds("aggregator"), store_dir=tmp_path / "agg",
            directory=directory_of(keys),
            codec=CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
            windows=PhaseWindows(keys=15, shares=15, masked=20, unmask=15), min_clients=4, target_clients=7,
            summing_workers=2,
        )  # fmt: skip
        async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
            devices = secure_devices(broker, digits, keys, agg.verify_key, FED, mqtt=creds)
            rogue = next(d for d in devices if d.client_id == ROGUE)
            rogue._secagg = RogueClient(FED, ROGUE, keys[ROGUE], agg.verify_key, directory_of(keys))
            results = await run_rounds(agg, devices, 1)
            secure = agg.last_secure
            assert agg.summing is not None
            summed = sum(agg.summing.summed.values())
    finally:
        broker.stop()
    assert results[0].status == "closed" and results[0].contributors == 6, results[0].reason
    assert summed == 7  # every input, the rogue's included, went through the workers
    honest = [d for d in devices if d.client_id != ROGUE]
    assert secure is not None and secure.server is not None and secure.total is not None
    assert secure.server.masked == frozenset(d.client_id for d in honest)
    expected = np.zeros_like(secure.total)
    for device in honest:
        np.add(expected, device.secure_round.encoded, out=expected)
    expected &= np.uint32((1 << secure.config.bits) - 1)
    np.testing.assert_array_equal(secure.total, expected)
