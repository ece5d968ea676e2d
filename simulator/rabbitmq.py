"""Run a private RabbitMQ node with its MQTT plugin on free loopback ports (tests).

RabbitMQ is the third broker of the integration suite, installed from the Debian archive: 3.10 there
speaks MQTT 3.1.1 only (3.13 added MQTT 5), QoS 0 and 1, keeps retained messages in a per-node store and
sessions as durable queues. It drops an MQTT 5 CONNECT without a CONNACK, which is why the connection's
``auto`` mode alternates versions when a CONNECT goes unanswered; ``url`` says ``protocol=3.1.1`` to
skip that. It sends retained messages to exact-topic subscriptions only, so ``url`` also says
``retained_wildcards=0`` (``MqttConfig.retained_wildcards``).

The node gets its own folder (Mnesia, logs, Erlang cookie), AMQP, distribution and MQTT ports, and its own
``epmd`` on a free port, so it neither meets a system RabbitMQ nor leaves a daemon behind: ``close()``
stops the node's process group and that ``epmd``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from shared.errors import FedmqError
from simulator.nats import mqtt_connack_ok
from simulator.process import ServerProcess, find_binary, free_port

log = logging.getLogger(__name__)


def find_rabbitmq_server() -> str:
    """The real start script (``/usr/sbin/rabbitmq-server`` would switch to the ``rabbitmq`` user)."""
    return find_binary(
        "rabbitmq-server",
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
        hint="run scripts/install_system_deps.sh (apt rabbitmq-server)",
        path_first=False,
    )


def find_epmd() -> str:
    return find_binary("epmd", "/usr/bin/epmd", hint="erlang-base has it (rabbitmq-server needs it)")


class RabbitMqBroker(ServerProcess):
    """A private RabbitMQ node with the MQTT plugin; ``stop()`` and ``kill()`` signal the node's whole
    process group (the start script, beam and its helpers) and also end its private ``epmd``."""

    stop_grace_s = 30.0

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir, prefix="fedmq-rabbitmq-")
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"fedmq{self.port}@localhost"
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}?protocol=3.1.1&retained_wildcards=0"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "mnesia"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    def render(self) -> dict[str, str]:
        """Write the config and plugin list; the environment that points the node at them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rabbitmq.conf"
        conf.write_text(
            "# fedmq test node: rendered by simulator.rabbitmq\n"
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[rabbitmq_mqtt].\n")
        return {
            **os.environ,
            "HOME": str(self.workdir),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(self.data_dir),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    def start(self, timeout: float = 90.0) -> RabbitMqBroker:
        env = self.render()
        self.epmd = subprocess.Popen(
            [find_epmd(), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.process = subprocess.Popen(
            [find_rabbitmq_server()],
            cwd=self.workdir,
            env=env,
            stdout=open(self.workdir / "stdout.log", "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the script, beam and its helpers
        )
        self._started()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise FedmqError(f"rabbitmq exited at start (code {self.process.returncode}): {tail}")
            if mqtt_connack_ok(self.port):
                log.info("rabbitmq %s: MQTT ready on 127.0.0.1:%d", self.node, self.port)
                return self
            time.sleep(0.2)
        self.close()
        raise FedmqError(f"rabbitmq did not accept MQTT on port {self.port} within {timeout}s")

    def log_tail(self, chars: int = 1500) -> str:
        path = self.workdir / "stdout.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """SIGTERM to the node's process group (a clean shutdown); SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=10)
        self._end_leftovers()

    def kill(self) -> None:
        """SIGKILL to the node's process group: what a crashed node looks like."""
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._end_leftovers()

    def _end_leftovers(self) -> None:
        self._signal_group(signal.SIGKILL)  # helpers (disk monitor) that outlived the script
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
