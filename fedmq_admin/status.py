"""``fedmq status``: the state of a federation as the operator needs it, read without disturbing it.

Round history from the aggregator's store (its SQLite journal, opened read-only alongside the running
aggregator), per-device participation and bytes from ``participation.json`` (written by the aggregator
after every round, ``aggregator/ledger.py``), and who is online from the broker's retained presence
messages (read with the aggregator's account, under a client id of its own).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from shared.errors import FedmqError
from shared.mqtt import MqttConfig, MqttConnection
from shared.topics import Topics
from shared.wire import Presence, decode


def rounds(store_dir: Path, last: int = 20) -> list[dict[str, Any]]:
    """The last ``last`` rounds of the store (oldest first)."""
    path = Path(store_dir) / "journal.sqlite3"
    if not path.exists():
        raise FedmqError(f"{store_dir} is not an aggregator store (no journal.sqlite3)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT round_id, status, contributors, reason, opened_at, closed_at FROM rounds "
            "ORDER BY round_id DESC LIMIT ?",
            (last,),
        ).fetchall()
    finally:
        db.close()
    return [
        {"round": r, "status": s, "contributors": c, "reason": why,
         "seconds": round(closed - opened, 2) if closed else None}
        for r, s, c, why, opened, closed in reversed(rows)
    ]  # fmt: skip


def participation(store_dir: Path) -> dict[str, Any]:
    path = Path(store_dir) / "participation.json"
    if not path.exists():
        return {"devices": {}}
    return json.loads(path.read_text())


async def presence(
    mqtt: MqttConfig, federation: str, settle_s: float = 1.0, timeout: float = 15.0
) -> dict[str, bool]:
    """Retained presence of every client: {client id: online}. Waits until none arrived for ``settle_s``."""
    topics = Topics(federation)
    seen: dict[str, bool] = {}
    async with MqttConnection(mqtt, [topics.status_all]) as conn:
        await conn.wait_connected(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await conn.next_message(timeout=settle_s)
            if msg is None:
                break
            if isinstance(msg.payload, bytes) and msg.payload:
                try:
                    p = decode(msg.payload, Presence)
                except FedmqError:
                    continue
                seen[p.client_id] = p.online
    return seen


def status_client_id() -> str:
    return f"status-{secrets.token_hex(4)}"


def collect(store_dir: Path, mqtt: MqttConfig | None, federation: str, enrolled: list[str]) -> dict[str, Any]:
    """Everything ``fedmq status`` prints, as one JSON-able map."""
    online = asyncio.run(presence(mqtt, federation)) if mqtt is not None else None
    ledger = participation(store_dir)
    history = rounds(store_dir)
    devices = {}
    for device in sorted(set(enrolled) | set(ledger.get("devices", {}))):
        row = dict(ledger.get("devices", {}).get(device, {}))
        row["enrolled"] = device in enrolled
        if online is not None:
            row["online"] = bool(online.get(device, False))
        devices[device] = row
    return {
        "federation": federation,
        "model_version": ledger.get("version"),
        "rounds": history,
        "rounds_closed": sum(r["status"] == "closed" for r in history),
        "ledger_updated_at": ledger.get("updated_at"),
        "devices": devices,
    }


def render(report: dict[str, Any]) -> str:
    """A plain-text view of :func:`collect`'s report."""
    updated = report.get("ledger_updated_at")
    age = f", last round ended {time.time() - updated:.0f}s ago" if updated else ""
    lines = [f"federation {report['federation']}: model v{report['model_version']}{age}"]
    lines.append(f"rounds (last {len(report['rounds'])}): {report['rounds_closed']} closed")
    for r in report["rounds"][-10:]:
        why = f" ({r['reason']})" if r["reason"] else ""
        lines.append(f"  round {r['round']:>5} {r['status']:<9} {r['contributors']:>4} devices{why}")
    lines.append(f"devices ({len(report['devices'])}):")
    lines.append(f"  {'device':<24} {'enrolled':<8} {'online':<6} {'rounds':>6} {'last':>5} {'bytes in':>12}")
    for device, row in report["devices"].items():
        online = "-" if "online" not in row else ("yes" if row["online"] else "no")
        lines.append(
            f"  {device:<24} {'yes' if row['enrolled'] else 'no':<8} {online:<6} {row.get('rounds', 0):>6} "
            f"{row.get('last_round', '-')!s:>5} {row.get('bytes_in', 0):>12,}"
        )
    return "\n".join(lines)
