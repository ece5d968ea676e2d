"""``fedmq quarantine``: who sits out rounds (the aggregator's ``<store>/quarantine.json``), and lifting one.

The aggregator writes its quarantine state before every secure round and reads lift requests (one file
per device under ``<store>/quarantine-lift/``) at the next round's start: the operator's command needs
no connection to the running aggregator, only the store folder, like ``fedmq status``.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import FedmqError
from shared.quarantine import STATE_FILE, request_lift
from shared.topics import check_id


def entries(store: Path) -> dict[str, dict]:
    path = store / STATE_FILE
    if not path.exists():
        if not store.is_dir():
            raise FedmqError(f"{store} is not an aggregator store")
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise FedmqError(f"{path} is unreadable: {exc}") from exc
    return {str(d): dict(e) for d, e in data.items()}


def lift(store: Path, device: str) -> str:
    """Ask the aggregator to lift ``device``'s quarantine at its next round."""
    check_id(device, "device")
    known = entries(store)
    if device not in known:
        raise FedmqError(f"{device} is not quarantined (nor was it) in {store}")
    request_lift(store, device)
    return f"{device}: lift requested; the aggregator applies it at its next round (offences stay counted)"


def render(store: Path, *, as_json: bool = False) -> str:
    known = entries(store)
    if as_json:
        return json.dumps(known, indent=1, sort_keys=True)
    if not known:
        return "no device has been quarantined"
    lines = [f"{'device':<24} {'rule':<30} {'offences':>8}  since  until"]
    for device, e in sorted(known.items()):
        if e.get("lifted"):
            until = "lifted"
        elif e.get("until_round") is None:
            until = "permanent"
        else:
            until = f"round {e['until_round']}"
        lines.append(f"{device:<24} {e['rule']:<30} {e['offences']:>8}  {e['since_round']:>5}  {until}")
    return "\n".join(lines)
