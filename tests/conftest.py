"""Shared fixtures. Every broker here is a real one started on free loopback ports: Mosquitto from
broker_config/ by default, NATS (JetStream + MQTT 3.1.1) where a test is parametrized with
``tests.support.every_broker``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import MosquittoBroker
from simulator.data import load_digits_split
from simulator.nats import NatsServer


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MosquittoBroker | NatsServer]:
    """A private broker, stopped after the test whatever happens: Mosquitto unless indirectly
    parametrized with ``"nats"``."""
    if getattr(request, "param", "mosquitto") == "nats":
        with NatsServer(tmp_path / "nats") as nats:
            yield nats
        return
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running
    if (tmp_path / "broker" / "mosquitto.log").exists():
        logging.getLogger("tests.broker").debug((tmp_path / "broker" / "mosquitto.log").read_text()[-2000:])


@pytest.fixture(scope="session")
def digits():
    return load_digits_split(seed=0)
