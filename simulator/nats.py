"""Run a real NATS server (JetStream + MQTT listener), alone or as a 3-node cluster, on free loopback ports.

NATS speaks MQTT 3.1.1 only (no v5), QoS 0 and 1, keeps retained messages and persistent sessions in
JetStream, and maps MQTT ``/`` onto its subject separator ``.``, so a ``.`` inside a topic level is
refused. fedmq runs on it unchanged: the connection falls back to 3.1.1 and ids never contain ``.``
(``docs/brokers.md``). Tests and the demo use these launchers as they use :mod:`simulator.broker`:
each server gets its own folder, config and ports, never 1883 or NATS's 4222.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from shared.errors import FedmqError
from simulator.process import Lifecycle, ServerProcess, die_with_parent, find_binary, free_port

log = logging.getLogger(__name__)

#: NATS's default largest message (``max_payload``); fedmq sends this as ``max_packet_size`` because
#: MQTT 3.1.1 has no way for the broker to announce it.
NATS_MAX_PAYLOAD = 1024 * 1024


def find_nats_server() -> str:
    return find_binary(
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        hint="run scripts/install_system_deps.sh (apt package nats-server)",
    )


def mqtt_connack_ok(port: int, timeout: float = 2.0) -> bool:
    """Does an MQTT 3.1.1 CONNECT on ``port`` get an accepting CONNACK? (NATS opens its MQTT port before
    JetStream can hold sessions; only an accepted CONNECT proves it is ready.)"""
    client_id = b"fedmq-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol name, level 4, clean session, keepalive 60
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            reply = sock.recv(4)
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return reply[:2] == b"\x20\x02" and reply[3:4] == b"\x00"


class NatsServer(ServerProcess):
    """A private ``nats-server`` with JetStream and MQTT (lifecycle: ``simulator.process.ServerProcess``).

    Ports and the JetStream folder stay the same across restarts (persistence can be tested). ``url`` is
    the MQTT endpoint, with ``?protocol=3.1.1`` so that clients skip the refused v5 attempt, and the
    NATS payload limit as ``max_packet_size``.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        name: str = "fedmq-nats",
        mqtt_port: int | None = None,
        client_port: int | None = None,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
        cluster_name: str = "fedmq",
        ack_wait: str = "10s",
    ) -> None:
        super().__init__(workdir, prefix="fedmq-nats-")
        self.name = name
        self.mqtt_port = mqtt_port or free_port()
        self.client_port = client_port or free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.cluster_name = cluster_name
        self.ack_wait = ack_wait
        self.store_dir = self.workdir / "jetstream"
        self.log_file = self.workdir / "nats.log"
        self.conf_file = self.workdir / "nats.conf"

    @property
    def port(self) -> int:
        """The MQTT port (what clients connect to)."""
        return self.mqtt_port

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    @property
    def url(self) -> str:
        return f"mqtt://{self.endpoint}?protocol=3.1.1&max_packet_size={NATS_MAX_PAYLOAD}"

    @property
    def data_dir(self) -> Path:
        return self.store_dir

    def render(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# fedmq test/demo NATS server: rendered by simulator.nats",
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.client_port}",
            f"max_payload: {NATS_MAX_PAYLOAD}",
            f'jetstream {{ store_dir: "{self.store_dir}", max_memory_store: 256MB, max_file_store: 2GB }}',
        ]
        # ack_wait: a QoS 1 message delivered to a connection that died unacknowledged is sent again
        # after this long (NATS default 30 s); receivers de-duplicate, so shorter only recovers sooner.
        mqtt = f"listen: 127.0.0.1:{self.mqtt_port}, ack_wait: {self.ack_wait}"
        if self.cluster_port is not None:
            # Replicate MQTT state on three nodes explicitly: by default NATS sizes the replicas to the
            # servers it sees when the first MQTT client arrives, which can be two of three, and an R2
            # stream loses quorum with one node down (its sessions and retained messages then stall).
            replicas = min(3, len(self.routes) + 1)
            mqtt += f", stream_replicas: {replicas}, consumer_replicas: {replicas}"
        lines.append(f"mqtt {{ {mqtt} }}")
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f"cluster {{ name: {self.cluster_name}, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}"
            )
        self.conf_file.write_text("\n".join(lines) + "\n")
        return self.conf_file

    def launch(self) -> NatsServer:
        """Start the process without waiting for readiness (a cluster starts all nodes, then waits)."""
        self.render()
        self.process = subprocess.Popen(
            [find_nats_server(), "-c", str(self.conf_file), "-l", str(self.log_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # only a prctl before exec
        )
        self._started()
        return self

    def wait_ready(self, timeout: float = 30.0) -> NatsServer:
        """Until an MQTT CONNECT is accepted; FedmqError (after killing the server) past ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise FedmqError(f"nats-server {self.name} exited at start: {self.log_tail()}")
            if mqtt_connack_ok(self.mqtt_port):
                log.info("nats-server %s: MQTT ready on 127.0.0.1:%d", self.name, self.mqtt_port)
                return self
            time.sleep(0.1)
        self.kill()
        raise FedmqError(f"nats-server {self.name} did not accept MQTT within {timeout}s: {self.log_tail()}")

    def start(self, timeout: float = 30.0) -> NatsServer:
        return self.launch().wait_ready(timeout)

    def log_tail(self, chars: int = 1500) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""


class NatsCluster(Lifecycle):
    """``size`` NATS servers routed into one JetStream cluster, each with its own MQTT listener.

    MQTT sessions, retained messages and QoS 1 queues live in JetStream streams replicated on up to three
    nodes, so a client whose node dies reconnects to another and finds its session there. ``url`` lists
    every node's endpoint (fedmq's failover list); :meth:`url_from` starts the list at node ``i`` so
    clients can be spread across nodes.
    """

    def __init__(self, workdir: Path | None = None, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fedmq-nats-cluster-"))
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                self.workdir / f"n{i}",
                name=f"fedmq-n{i}",
                cluster_port=port,
                routes=[p for p in cluster_ports if p != port],
            )
            for i, port in enumerate(cluster_ports)
        ]

    def url_from(self, first: int) -> str:
        """The failover URL starting with node ``first`` (then the others in ring order)."""
        n = len(self.nodes)
        order = [self.nodes[(first + k) % n].endpoint for k in range(n)]
        return f"mqtt://{','.join(order)}?protocol=3.1.1&max_packet_size={NATS_MAX_PAYLOAD}"

    @property
    def url(self) -> str:
        return self.url_from(0)

    def start(self, timeout: float = 60.0) -> NatsCluster:
        for node in self.nodes:
            node.launch()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.wait_ready(max(1.0, deadline - time.monotonic()))
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
