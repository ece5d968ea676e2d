"""Pieces the chaos tests and the soak benchmark share: a broker with the *shipped* persistence settings,
and the invariants every fault run must keep.

The test template (``broker_config/mosquitto.conf.tmpl``) saves every second so ordinary tests can check
that a restarted broker kept its state; a fault campaign must instead face what production runs, so
:class:`ShippedMosquitto` renders the template with the persistence lines of
``broker_config/mosquitto.conf`` (autosave every 30 s): a SIGKILL loses whatever changed since the last
save, and fedmq must not lose a contribution because of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.broker import MosquittoBroker, broker_config_dir

_PERSISTENCE_KEYS = ("persistence", "autosave_interval", "autosave_on_changes")


def shipped_persistence(conf: Path | None = None) -> dict[str, str]:
    """The persistence settings of the shipped ``mosquitto.conf`` (key -> value)."""
    text = (conf or broker_config_dir() / "mosquitto.conf").read_text()
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*(\w+)\s+(\S+)", line)
        if match and match.group(1) in _PERSISTENCE_KEYS:
            found[match.group(1)] = match.group(2)
    return found


class ShippedMosquitto(MosquittoBroker):
    """A test broker whose persistence settings are the shipped config's, not the test template's."""

    def render(self) -> Path:
        path = super().render()
        settings = shipped_persistence()
        lines = []
        for line in path.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in settings:
                line = f"{key} {settings[key]}"
            lines.append(line)
        for key, value in settings.items():
            if not any(line.startswith(f"{key} ") for line in lines):
                lines.append(f"{key} {value}")
        path.write_text("\n".join(lines) + "\n")
        return path


@dataclass(frozen=True)
class RoundCheck:
    """What one round's invariants found (empty ``problems`` when all hold)."""

    round_id: int
    problems: tuple[str, ...]


def check_versions(versions: Sequence[int]) -> list[str]:
    """Snapshot versions must be contiguous from 0 with none repeated (no round applied twice)."""
    if list(versions) != list(range(len(versions))):
        return [f"versions are not contiguous from 0: {list(versions)[:20]}"]
    return []


def exact_sum(encodings: Iterable[np.ndarray], bits: int) -> np.ndarray:
    """The plaintext sum mod 2^bits of the survivors' encoded vectors (the unmasked sum's oracle)."""
    total: np.ndarray | None = None
    for vector in encodings:
        total = vector.astype(np.uint32).copy() if total is None else total + vector.astype(np.uint32)
    if total is None:
        raise ValueError("no encodings")
    return total & np.uint32((1 << bits) - 1) if bits < 32 else total
