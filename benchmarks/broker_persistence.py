r"""What it costs to make Mosquitto persist every acknowledged QoS 1 message before a crash can lose it.

Mosquitto 2.0 has no write-ahead log: persistence is a whole-database snapshot, written every
``autosave_interval`` seconds, or -- with ``autosave_on_changes true`` -- after that many changes. The
only way to have each PUBACKed message on disk is ``autosave_on_changes true`` + ``autosave_interval 1``:
rewrite the whole database after every change. This benchmark measures that against the shipped setting
(autosave every 30 s) and no persistence, in the situation that matters to fedmq: updates queued for an
offline aggregator's persistent session (so the database grows with every message).

Per setting it publishes ``--messages`` QoS 1 messages of ``--size`` bytes (one at a time, each awaiting
its PUBACK) and reports the publish rate, the bytes the broker sent towards storage (``/proc/<pid>/io``
``write_bytes``, which leaves out its socket writes) and how many messages survived a SIGKILL right after
the last PUBACK.

    nice -n 10 .venv/bin/python benchmarks/broker_persistence.py \
        --json benchmarks/results/broker_persistence.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.mqtt import MqttConfig, MqttConnection
from simulator.broker import MosquittoBroker

_ON = {"persistence": "true"}
SETTINGS = {
    "no persistence": {"persistence": "false"},
    "shipped (autosave every 30 s)": {**_ON, "autosave_interval": "30", "autosave_on_changes": "false"},
    "save after every change": {**_ON, "autosave_interval": "1", "autosave_on_changes": "true"},
}


class TunedMosquitto(MosquittoBroker):
    """The test template with these persistence lines."""

    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        super().__init__(workdir)
        self.settings = settings

    def render(self) -> Path:
        path = super().render()
        lines = [
            line
            for line in path.read_text().splitlines()
            if not line.split(maxsplit=1) or line.split(maxsplit=1)[0] not in self.settings
        ]
        lines += [f"{key} {value}" for key, value in self.settings.items()]
        path.write_text("\n".join(lines) + "\n")
        return path


def written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


async def measure(name: str, settings: dict[str, str], messages: int, size: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="fedmq-persist-"))
    broker = TunedMosquitto(workdir / "broker", settings).start()
    try:
        url = broker.url
        # The offline "aggregator": a persistent session subscribed to the topic, then gone.
        sink = MqttConnection(MqttConfig.from_url(url, client_id="sink"), ["bench/updates"])
        async with sink:
            await sink.wait_connected()
        assert broker.process is not None
        before = written_bytes(broker.process.pid)
        payload = bytes(size)
        async with MqttConnection(MqttConfig.from_url(url, client_id="device")) as device:
            await device.wait_connected()
            started = time.perf_counter()
            for i in range(messages):
                await device.publish("bench/updates", payload[:-4] + i.to_bytes(4, "big"))
            elapsed = time.perf_counter() - started
            written = written_bytes(broker.process.pid) - before
        broker.kill()  # right after the last PUBACK
        broker.start()
        sink2 = MqttConnection(MqttConfig.from_url(url, client_id="sink"), ["bench/updates"])
        survived = 0
        async with sink2:
            await sink2.wait_connected()
            while await sink2.next_message(timeout=2.0) is not None:
                survived += 1
        return {
            "setting": name,
            "config": settings,
            "messages": messages,
            "size": size,
            "publish_per_s": messages / elapsed,
            "disk_bytes_written": written,
            "disk_bytes_per_message": written / messages,
            "survived_sigkill": survived,
        }
    finally:
        broker.close()


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    return [await measure(name, s, args.messages, args.size) for name, s in SETTINGS.items()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--size", type=int, default=10_000, help="bytes per message (a masked input is ~10 KB)")
    args = p.parse_args()
    rows = asyncio.run(run(args))
    print(f"{'setting':<32} {'msg/s':>8} {'disk B/msg':>12} {'survived SIGKILL':>17}")
    for row in rows:
        print(f"{row['setting']:<32} {row['publish_per_s']:>8.0f} {row['disk_bytes_per_message']:>12.0f} "
              f"{row['survived_sigkill']:>10} of {row['messages']}")  # fmt: skip
    command = shlex.join([".venv/bin/python", *sys.argv])
    print(f"reproduce: {command}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "broker_persistence", "command": command, "rows": rows},
                                        indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
