"""What the JS-device tests (test_js_device, test_js_self_healing) share: one secure federation of Python
devices and a JS device on Mosquitto's websockets listener, set up the same way in every test, so a test
states only what it changes (its faults, its cohort size, its aggregator link) and its assertions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nacl.signing
import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient
from shared.mqtt import MqttConfig
from simulator.broker import MosquittoBroker
from simulator.chaos import exact_sum
from simulator.js_devices import JsDevice, device_config
from tests.support import digit_shards, directory_of, secure_config, secure_devices

FED = "mixed"


def aggregator_config(
    tmp_path: Path, mqtt: MqttConfig, keys: dict[str, nacl.signing.SigningKey], masked: float = 40
) -> AggregatorConfig:
    """A secure aggregator for every enrolled identity (four of them may close a round), with windows
    wide enough for a JS device that loses its link or re-sends (``masked``: that phase's window)."""
    windows = PhaseWindows(keys=30, shares=30, masked=masked, unmask=30)
    return secure_config(tmp_path, FED, mqtt, keys, windows=windows, min_clients=4)


def python_devices(
    broker: MosquittoBroker,
    digits: Any,
    keys: dict[str, nacl.signing.SigningKey],
    js_id: str,
    agg: Aggregator,
) -> list[EdgeClient]:
    """A secure Python device for every identity but the JS device's (each keeps its encodings)."""
    return secure_devices(broker, digits, keys, agg.verify_key, FED, skip={js_id})


def js_config(
    broker: MosquittoBroker,
    digits: Any,
    keys: dict[str, nacl.signing.SigningKey],
    js_id: str,
    agg: Aggregator,
    tmp_path: Path,
    **extra: Any,
) -> dict[str, Any]:
    """The JS device's config: identity ``js_id``, the shard the Python devices leave it, one round of
    one epoch unless ``extra`` (any :func:`simulator.js_devices.device_config` keyword) says otherwise."""
    shard = digit_shards(digits, len(keys))[list(keys).index(js_id)]
    values: dict[str, Any] = {"rounds": 1, "timeout_s": 240, "train": {"epochs": 1, "lr": 0.1}}
    values.update(extra)
    return device_config(
        ws_url=broker.ws_url,
        federation=FED,
        device=js_id,
        identity=keys[js_id],
        aggregator_key=agg.verify_key,
        directory=directory_of(keys),
        features=digits.x_train[shard],
        labels=digits.y_train[shard],
        report=tmp_path / "js-report.json",
        **values,
    )


@contextlib.asynccontextmanager
async def js_device(runner: str, config: dict[str, Any], workdir: Path) -> AsyncIterator[JsDevice]:
    """Start a JS device and kill it on the way out, whatever the test did (its report and log stay)."""
    js = await JsDevice.start(runner, config, workdir)
    try:
        yield js
    finally:
        await js.kill()


def captured(agg: Aggregator, devices: list[EdgeClient]) -> dict[str, Any]:
    """The last secure round's unmasked sum and bit width, and ``devices``' encodings (those the sum
    should hold besides the JS device's), taken between rounds (the next round replaces them) for
    :func:`assert_exact_sum`."""
    secure = agg.last_secure
    assert secure is not None, "no secure round ran"
    return {
        "total": None if secure.total is None else secure.total.copy(),
        "bits": secure.config.bits,
        "python": [d.secure_round.encoded.copy() for d in devices],
    }


def assert_exact_sum(capture: dict[str, Any], js_encoded: list[int]) -> None:
    """A :func:`captured` round's unmasked sum equals, bit for bit, the JS device's reported encoding
    plus the captured Python devices' ones."""
    vectors = [np.array(js_encoded, dtype=np.uint32), *capture["python"]]
    np.testing.assert_array_equal(capture["total"], exact_sum(vectors, capture["bits"]))
