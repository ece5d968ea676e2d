"""Shared fixtures. Every broker here is a real Mosquitto started from broker_config/ on a free port."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import MosquittoBroker
from simulator.data import load_digits_split


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running
    if (tmp_path / "broker" / "mosquitto.log").exists():
        logging.getLogger("tests.broker").debug((tmp_path / "broker" / "mosquitto.log").read_text()[-2000:])


@pytest.fixture(scope="session")
def digits():
    return load_digits_split(seed=0)
