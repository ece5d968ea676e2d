"""Run a real Mosquitto from ``broker_config/`` on a free loopback port (tests, the demo).

Never port 1883: a system broker may already sit there.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from shared.errors import FedmqError
from simulator.process import ServerProcess, die_with_parent, find_binary, free_port

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def broker_config_dir() -> Path:
    return Path(os.environ.get("FEDMQ_BROKER_CONFIG", REPO_ROOT / "broker_config"))


def find_mosquitto() -> str:
    return find_binary(
        "mosquitto",
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        hint="run scripts/install_system_deps.sh (apt-get install mosquitto)",
    )


#: The identity-binding settings a broker with accounts needs (also in broker_config/mosquitto.conf).
PRODUCTION_AUTH = (
    "allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\nuse_username_as_clientid true"
)


class MosquittoBroker(ServerProcess):
    """A private Mosquitto process (lifecycle in :class:`~simulator.process.ServerProcess`); SIGTERM makes
    it save its persistence file before it exits."""

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        auth: str = "allow_anonymous true",
        websockets: bool = False,
        autosave_interval_s: int = 1,
    ) -> None:
        super().__init__(workdir, prefix="fedmq-broker-")
        self.port = port or free_port()
        self.auth = auth
        #: Port of an extra MQTT-over-WebSockets listener (JavaScript and browser devices), if asked for.
        self.ws_port = free_port() if websockets else None
        #: Seconds between saves of the in-memory database; 0 saves only on SIGTERM, so a SIGKILL loses
        #: everything since the start (a deterministic crash for tests of what devices must re-send).
        self.autosave_interval_s = autosave_interval_s
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "mosquitto.log"
        self.conf_file = self.workdir / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        if self.ws_port is None:
            raise FedmqError("this broker was started without a websockets listener (websockets=True)")
        return f"ws://127.0.0.1:{self.ws_port}"

    @classmethod
    def with_accounts(
        cls, accounts: dict[str, str], workdir: Path | None = None, *, federation: str,
        acl: str | None = None,
    ) -> MosquittoBroker:
        """A broker that requires these username/password accounts and enforces ``broker_config/acl.conf``
        (as shipped for ``federation`` ``"demo"``; rendered for any other; or the ``acl`` text given).
        ``federation`` is required: every ACL rule names it, and a broker scoped to another federation
        than the test's would refuse its messages silently.

        The client id is the account (``use_username_as_clientid``): whatever id a client asks for, an
        account can only ever hold its own session, so no device can take over the aggregator's (or
        another device's) connection or destroy messages queued for it.
        """
        broker = cls(workdir)
        broker.workdir.mkdir(parents=True, exist_ok=True)
        passwd = broker.workdir / "passwd"
        passwd.write_text("")
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for user, password in accounts.items():
            subprocess.run([tool, "-b", str(passwd), user, password], check=True, capture_output=True)
        passwd.chmod(0o600)
        rules = broker_config_dir() / "acl.conf"  # as shipped: one federation, `demo`
        if federation != "demo" or acl is not None:
            from fedmq_admin.acl import scoped

            rules = broker.workdir / "acl"
            rules.write_text(acl if acl is not None else scoped(federation))
        broker.auth = (PRODUCTION_AUTH).format(passwd=passwd, acl=rules)
        return broker

    def render(self) -> Path:
        template = (broker_config_dir() / "mosquitto.conf.tmpl").read_text()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = template.format(
            port=self.port,
            data_dir=self.data_dir,
            log_file=self.log_file,
            user=getpass.getuser(),
            auth=self.auth,
            autosave_interval=self.autosave_interval_s,
            websockets=f"listener {self.ws_port} 127.0.0.1\nprotocol websockets" if self.ws_port else "",
        )
        self.conf_file.write_text(text)
        return self.conf_file

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        self.render()
        self._close_pipes()  # of the previous run, if it died by itself
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,  # only a prctl before exec
        )
        self._started()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise FedmqError(f"mosquitto exited at start (code {self.process.returncode}): {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                log.info("mosquitto listening on 127.0.0.1:%d", self.port)
                return self
            time.sleep(0.05)
        self.kill()
        raise FedmqError(f"mosquitto did not listen on port {self.port} within {timeout}s")


__all__ = ["PRODUCTION_AUTH", "MosquittoBroker", "broker_config_dir", "find_mosquitto", "free_port"]
