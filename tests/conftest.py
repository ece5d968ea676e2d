"""Shared fixtures. Every broker here is a real one started on free loopback ports: Mosquitto from
broker_config/ by default; NATS (JetStream + MQTT 3.1.1) and RabbitMQ (MQTT plugin, 3.1.1) where a test
is parametrized with ``tests.support.every_broker`` or ``mosquitto_and_nats``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import MosquittoBroker
from simulator.data import load_digits_split
from simulator.nats import NatsServer
from simulator.rabbitmq import RabbitMqBroker


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[MosquittoBroker | NatsServer | RabbitMqBroker]:
    """A private broker, stopped after the test whatever happens: Mosquitto unless indirectly
    parametrized with ``"nats"`` or ``"rabbitmq"``."""
    kind = getattr(request, "param", "mosquitto")
    if kind in ("nats", "rabbitmq"):
        launcher = NatsServer if kind == "nats" else RabbitMqBroker
        with launcher(tmp_path / kind) as other:
            yield other
        return
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running
    if (tmp_path / "broker" / "mosquitto.log").exists():
        logging.getLogger("tests.broker").debug((tmp_path / "broker" / "mosquitto.log").read_text()[-2000:])


@pytest.fixture(scope="session")
def digits():
    return load_digits_split(seed=0)
