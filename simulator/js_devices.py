"""Run JavaScript devices (``clients/js``) as subprocesses: in Node, or in a page of headless Chromium.

The fleet simulator, the demo (``--js-devices``), the integration tests and ``benchmarks/js_device.py``
use this to put JS devices beside Python ones. Each device gets a JSON config (broker WebSockets URL,
identity, enrolment directory, its data shard) and writes a JSON report: per round its encoded (pre-mask)
vector, bytes in and out, seconds from joining to its reveal, and its training time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import numpy as np

from shared.errors import ConfigError, FedmqError

log = logging.getLogger(__name__)

JS_DIR = Path(__file__).resolve().parents[1] / "clients" / "js"
RUNNERS = {"node": "device.js", "browser": "browser-device.js"}


def ensure_built(runner: str) -> None:
    """Install the client's npm packages and build the browser bundle if this checkout lacks them."""
    if runner not in RUNNERS:
        raise ConfigError("js_runner", f"{runner!r} is not one of {sorted(RUNNERS)}")
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise FedmqError("node and npm are needed for JS devices: run scripts/install_system_deps.sh")
    if not (JS_DIR / "node_modules" / "playwright-core").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=600)
    if runner == "browser" and not (JS_DIR / "browser" / "fedmq-device.js").exists():
        subprocess.run(["npm", "run", "build"], cwd=JS_DIR, check=True, timeout=600)


def device_config(
    *,
    ws_url: str,
    federation: str,
    device: str,
    identity: nacl.signing.SigningKey,
    aggregator_key: bytes,
    directory: dict[str, bytes],
    features: Any,
    labels: Any,
    rounds: int,
    timeout_s: float,
    report: Path,
    train: dict[str, Any] | None = None,
    faults: dict[str, Any] | None = None,
    chunk_limit: int | None = None,
) -> dict[str, Any]:
    """The JSON config ``clients/js/src/run.js`` reads."""
    return {
        "url": ws_url,
        "federation": federation,
        "device": device,
        "identity_seed": bytes(identity).hex(),
        "aggregator_key": bytes(aggregator_key).hex(),
        "directory": {cid: bytes(pk).hex() for cid, pk in directory.items()},
        "data": {"x": np.asarray(features, dtype=np.float32).tolist(), "y": np.asarray(labels).tolist()},
        "train": train or {},
        "rounds": rounds,
        "timeout_s": timeout_s,
        "faults": faults or {},
        "report": str(report),
        **({"chunk_limit": chunk_limit} if chunk_limit else {}),
    }


@dataclass
class JsDevice:
    """One running JS device process."""

    runner: str
    config_path: Path
    report_path: Path
    process: asyncio.subprocess.Process | None = None
    stderr: list[str] = field(default_factory=list)
    _drain: asyncio.Task | None = None

    @classmethod
    async def start(
        cls, runner: str, config: dict[str, Any], workdir: Path, ready_timeout_s: float = 120
    ) -> JsDevice:
        """Spawn the device and wait until it is connected (its ``ready`` line)."""
        ensure_built(runner)
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / f"{config['device']}.json"
        config_path.write_text(json.dumps(config))
        device = cls(runner, config_path, Path(config["report"]))
        device.process = await asyncio.create_subprocess_exec(
            "node",
            str(JS_DIR / "bin" / RUNNERS[runner]),
            str(config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        device._drain = asyncio.create_task(device._read_stderr())
        assert device.process.stdout is not None  # opened as a pipe above
        try:
            line = await asyncio.wait_for(device.process.stdout.readline(), timeout=ready_timeout_s)
        except asyncio.TimeoutError:
            await device.kill()
            raise FedmqError(
                f"JS device {config['device']} did not connect within {ready_timeout_s}s"
            ) from None
        if line.strip() != b"ready":
            await device.finish(10)
            raise FedmqError(f"JS device {config['device']} failed to start: {device.log_tail()}")
        return device

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr[-lines:])

    async def wait(self, timeout_s: float) -> int:
        """Wait for the device to finish its rounds by itself; returns its exit code."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, timeout=10)
        return code

    async def finish(self, timeout_s: float = 30) -> dict[str, Any] | None:
        """Stop the device (SIGTERM: it writes its report) and return the report."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await self.wait(timeout_s)
            except asyncio.TimeoutError:
                await self.kill()
        elif self._drain is not None:
            await asyncio.wait_for(self._drain, timeout=10)
        return self.report()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def report(self) -> dict[str, Any] | None:
        if not self.report_path.exists():
            return None
        return json.loads(self.report_path.read_text())
