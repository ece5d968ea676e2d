"""A federation's admin folder: keys, broker config, enrolled set, per-component config files.

``fedmq init`` lays it out; ``enroll``/``revoke`` change the enrolled set (a new signed
``enrolment.fedmq``, a new broker account) and write one provisioning bundle per device::

    <dir>/federation.json      admin state: name, epoch, broker address, TLS mode, last serial
    <dir>/authority.key        enrolment authority (Ed25519 seed, 0600): keep it here, offline
    <dir>/enrolment.fedmq      the current enrolled set, signed by the authority
    <dir>/ca/                  the federation's CA (ca.key 0600) when TLS is on
    <dir>/broker/              mosquitto.conf, passwd, acl, server.crt/key, ca.crt, data/
    <dir>/aggregator/          aggregator.toml, its password or certificate, store/aggregator.key
    <dir>/devices/<id>/        device.toml, identity.key, password or client.crt/key, ca.crt, enrolment.fedmq

Every config file uses paths relative to its own folder, so ``aggregator/`` or ``devices/<id>/`` can
be copied as a whole to the machine that runs it.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import nacl.signing

from aggregator.summing import worker_account
from fedmq_admin import pki
from fedmq_admin.broker import (
    Listener,
    acl_rules,
    hash_password,
    read_passwd,
    render_conf,
    revoked_acl,
    write_passwd,
    write_private,
)
from shared.enrolment import EnrolmentList, make_list, read_list_file, verify_list, write_list_file
from shared.errors import ConfigError
from shared.signing import load_or_create_key
from shared.topics import check_id

log = logging.getLogger(__name__)

AGGREGATOR = "aggregator"
STATE = "federation.json"


@dataclass
class FederationState:
    """What the admin tool remembers about a federation (``federation.json``)."""

    federation: str
    epoch: str  # hex, 16 bytes
    host: str  # the name devices use to reach the broker (also in the server certificate)
    port: int
    bind: str | None
    tls: bool
    client_certs: bool
    serial: int = 0
    #: The aggregator's summing worker processes: each needs its own broker account and ACL lines.
    summing_workers: int = 0


class Federation:
    """An initialised admin folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / STATE
        if not path.exists():
            raise ConfigError("dir", f"{self.root} is not a federation folder (no {STATE}; run fedmq init)")
        try:
            self.state = FederationState(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError("dir", f"{path} is damaged: {exc}") from exc

    # -- paths and keys --------------------------------------------------------------------------

    @property
    def authority(self) -> nacl.signing.SigningKey:
        path = self.root / "authority.key"
        if not path.exists():
            raise ConfigError("authority", f"{path} is missing: enrolment changes need the authority key")
        return load_or_create_key(path)

    @property
    def authority_public(self) -> bytes:
        return bytes(self.authority.verify_key)

    @property
    def aggregator_public(self) -> bytes:
        return bytes(load_or_create_key(self.root / "aggregator" / "store" / "aggregator.key").verify_key)

    @property
    def enrolment_path(self) -> Path:
        return self.root / "enrolment.fedmq"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.state.tls else 'mqtt'}://{self.state.host}:{self.state.port}"

    def enrolled(self) -> EnrolmentList:
        """The current list, verified against the authority's public key."""
        return verify_list(
            read_list_file(self.enrolment_path),
            self._authority_public_from_file(),
            self.state.federation,
            bytes.fromhex(self.state.epoch),
        )

    def _authority_public_from_file(self) -> bytes:
        return bytes.fromhex((self.root / "authority.pub").read_text().strip())

    def save(self) -> None:
        (self.root / STATE).write_text(json.dumps(asdict(self.state), indent=2) + "\n")

    # -- enrolment -------------------------------------------------------------------------------

    def _publish_list(self, directory: dict[str, bytes], revoked: list[str]) -> EnrolmentList:
        self.state.serial += 1
        msg = make_list(
            self.state.federation, bytes.fromhex(self.state.epoch), self.state.serial, directory, revoked,
            self.authority,
        )  # fmt: skip
        write_list_file(self.enrolment_path, msg)
        self.save()
        return msg

    def enroll(self, device: str, *, public_key: bytes | None = None) -> Path:
        """Enrol ``device``: identity (unless its own ``public_key`` is given), broker account or client
        certificate, a new signed list; returns its bundle folder."""
        check_id(device, "device")
        if device == AGGREGATOR or device.startswith(worker_account(AGGREGATOR, 0)[:-1]):
            raise ConfigError("device", f"{device!r} is an aggregator account")
        current = self.enrolled()
        if device in current.directory():
            raise ConfigError("device", f"{device!r} is already enrolled (revoke it first to re-key)")
        if device in current.revoked:
            raise ConfigError("device", f"{device!r} was revoked; enrol the device under a new id")
        bundle = self.root / "devices" / device
        if bundle.exists():
            shutil.rmtree(bundle)
        bundle.mkdir(parents=True)
        if public_key is None:
            identity = load_or_create_key(bundle / "identity.key")
            public_key = bytes(identity.verify_key)
        elif len(public_key) != 32:
            raise ConfigError("public_key", "must be a 32-byte Ed25519 key")
        credentials = self._account(device, bundle)
        msg = self._publish_list({**current.directory(), device: public_key}, list(current.revoked))
        shutil.copy(self.enrolment_path, bundle / "enrolment.fedmq")
        self.write_acl()
        lines = [
            f"# fedmq-edge settings for {device}: `fedmq-edge --config device.toml` (paths are relative to",
            "# this file). Give the model and data under [training], e.g. model = \"mypkg.net:build\".",
            f"federation = {json.dumps(self.state.federation)}",
            "",
            "[broker]",
            f"url = {json.dumps(self.url)}",
            f"client_id = {json.dumps(device)}",
            *credentials,
            "",
            "[device]",
            *(["identity = \"identity.key\""] if (bundle / "identity.key").exists() else []),
            f"aggregator_key = \"{self.aggregator_public.hex()}\"",
            f"authority_key = \"{self.authority_public.hex()}\"",
            "enrolment = \"enrolment.fedmq\"",
            "",
            "[training]",
            "# model = \"mypkg.net:build\"   # module:factory returning an nn.Module",
            "# data = \"data.npz\"           # arrays x and y",
            "",
        ]
        (bundle / "device.toml").write_text("\n".join(lines))
        log.info("enrolled %s (serial %d, %d devices)", device, msg.serial, len(msg.devices))
        return bundle

    def revoke(self, device: str) -> EnrolmentList:
        """Remove ``device`` from the enrolled set (signed, serial + 1) and its broker account."""
        current = self.enrolled()
        directory = current.directory()
        if device not in directory:
            raise ConfigError("device", f"{device!r} is not enrolled")
        del directory[device]
        msg = self._publish_list(directory, [*current.revoked, device])
        passwd = read_passwd(self.broker_dir / "passwd")
        if passwd.pop(device, None) is not None:
            write_passwd(self.broker_dir / "passwd", passwd)
        if self.state.client_certs:
            cert = self.root / "devices" / device / "client.crt"
            if cert.exists():  # enrolled with --public-key elsewhere: no certificate was issued here
                pki.revoke(self._ca, cert)
            pki.write_crl(self._ca, self.broker_dir / "crl.pem")
        self.write_acl()
        log.info("revoked %s (serial %d, %d devices)", device, msg.serial, len(msg.devices))
        return msg

    def write_acl(self) -> Path:
        """``broker/acl``: the shipped rules for this federation, one block per enrolled device (reload
        the broker to apply: ``kill -HUP``, as for accounts)."""
        path = self.broker_dir / "acl"
        path.parent.mkdir(parents=True, exist_ok=True)
        enrolled = self.enrolled()
        # revoked accounts have no block (no grant); the deny blocks also silence their open sessions
        rules = acl_rules(self.state.summing_workers, AGGREGATOR, federation=self.state.federation,
                          devices=enrolled.directory())  # fmt: skip
        path.write_text(rules + revoked_acl(list(enrolled.revoked)))
        return path

    def _account(self, user: str, folder: Path) -> list[str]:
        """A broker account for ``user``; its files go to ``folder``; returns its ``[broker]`` lines."""
        lines = []
        if self.state.tls:
            shutil.copy(self.root / "ca" / "ca.crt", folder / "ca.crt")
            lines.append('ca_file = "ca.crt"')
        if self.state.client_certs:
            pki.issue(self._ca, user, folder, "client")
            lines += ['cert_file = "client.crt"', 'key_file = "client.key"']
        else:
            password = secrets.token_urlsafe(24)
            write_private(folder / "password", password + "\n")
            passwd = read_passwd(self.broker_dir / "passwd")
            passwd[user] = hash_password(password)
            write_passwd(self.broker_dir / "passwd", passwd)
            lines += [f"username = {json.dumps(user)}", 'password_file = "password"']
        return lines

    @property
    def _ca(self) -> tuple[Path, Path]:
        return self.root / "ca" / "ca.crt", self.root / "ca" / "ca.key"

    # -- broker ----------------------------------------------------------------------------------

    def set_summing_workers(self, count: int) -> None:
        """Give the aggregator ``count`` summing workers: accounts ``aggregator-sum<i>`` (the aggregator's
        password; extra ones removed), their ACL lines, ``summing_workers`` in ``aggregator.toml``.
        The broker must re-read its files (SIGHUP) and the aggregator restart to use them."""
        if not 0 <= count <= 64:
            raise ConfigError("summing_workers", f"must be in [0, 64], got {count}")
        if count and self.state.client_certs:
            raise ConfigError(
                "summing_workers", "summing workers use password accounts; not with --client-certs"
            )
        passwd = read_passwd(self.broker_dir / "passwd")
        for user in [u for u in passwd if u.startswith(worker_account(AGGREGATOR, 0)[:-1])]:
            del passwd[user]
        if count:
            password = (self.root / "aggregator" / "password").read_text().strip()
            for index in range(count):  # its own processes on its machine: the aggregator's password
                passwd[worker_account(AGGREGATOR, index)] = hash_password(password)
        write_passwd(self.broker_dir / "passwd", passwd)
        self.state.summing_workers = count
        self.save()
        self.write_acl()
        config = self.root / "aggregator" / "aggregator.toml"
        if config.exists():
            line = f"summing_workers = {count}   # masked inputs summed in N worker processes (0: in-process)"
            text, found = re.subn(r"(?m)^summing_workers = .*$", line, config.read_text())
            if not found:
                text = re.sub(r"(?m)^(store = .*)$", lambda m: f"{m.group(1)}\n{line}", text, count=1)
            config.write_text(text)

    def render_broker(self, *, root: Path | None = None, user: str | None = None, port: int | None = None,
                      bind: str | None = None, log_dest: str = "stdout") -> Path:  # fmt: skip
        """(Re)write ``broker/mosquitto.conf`` and ``broker/acl`` for the broker to see its files under
        ``root`` (default: where they are; ``/mosquitto/config`` for the container)."""
        folder = self.broker_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        self.write_acl()
        where = root or folder.resolve()
        listener = Listener(
            port=port or self.state.port,
            bind=bind if bind is not None else self.state.bind,
            tls=self.state.tls,
            client_certs=self.state.client_certs,
        )
        data = Path("/mosquitto/data") if root is not None else (folder / "data").resolve()
        conf = render_conf(root=where, listener=listener, data_dir=data, log_dest=log_dest, user=user)
        target = folder / ("mosquitto.conf" if root is None else f"mosquitto.{root.name}.conf")
        target.write_text(conf)
        return target


def init_federation(
    root: Path,
    federation: str,
    *,
    host: str = "localhost",
    port: int | None = None,
    bind: str | None = None,
    tls: bool = True,
    client_certs: bool = False,
    extra_names: list[str] | None = None,
    initial: Path | None = None,
    summing_workers: int = 0,
) -> Federation:
    """Create the admin folder of a new federation (refuses an existing one)."""
    check_id(federation, "federation")
    root = Path(root)
    if (root / STATE).exists():
        raise ConfigError("dir", f"{root} already holds a federation; use another folder")
    if client_certs and not tls:
        raise ConfigError("client_certs", "client certificates need TLS")
    if summing_workers and client_certs:
        raise ConfigError("summing_workers", "summing workers use password accounts; not with --client-certs")
    if not 0 <= summing_workers <= 64:
        raise ConfigError("summing_workers", f"must be in [0, 64], got {summing_workers}")
    root.mkdir(parents=True, exist_ok=True)
    state = FederationState(
        federation=federation,
        epoch=secrets.token_bytes(16).hex(),
        host=host,
        port=port or (8883 if tls else 1883),
        bind=bind,
        tls=tls,
        client_certs=client_certs,
        summing_workers=summing_workers,
    )
    (root / STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    fed = Federation(root)
    authority = load_or_create_key(root / "authority.key")
    (root / "authority.pub").write_text(bytes(authority.verify_key).hex() + "\n")
    aggregator_dir = root / "aggregator"
    load_or_create_key(aggregator_dir / "store" / "aggregator.key")
    broker = fed.broker_dir
    broker.mkdir(parents=True, exist_ok=True)
    write_passwd(broker / "passwd", {})
    if tls:
        ca = pki.make_ca(root / "ca", federation)
        names = sorted({host, "localhost", "127.0.0.1", *(extra_names or [])})
        pki.issue(ca, host, broker, "server", server_names=names)
        shutil.copy(ca[0], broker / "ca.crt")
        if client_certs:
            pki.write_crl(ca, broker / "crl.pem")
    credentials = fed._account(AGGREGATOR, aggregator_dir)
    fed._publish_list({}, [])
    if summing_workers:
        fed.set_summing_workers(summing_workers)  # before aggregator.toml exists: it is written below
    if initial is not None:
        shutil.copy(initial, aggregator_dir / "initial.fedmq")
    fed.render_broker(user=getpass.getuser())
    lines = [
        "# fedmq-aggregator settings: `fedmq-aggregator --config aggregator.toml` (paths relative to this",
        "# file). Every round setting is listed in docs/operations.md.",
        f"federation = {json.dumps(federation)}",
        "",
        "[broker]",
        f"url = {json.dumps(fed.url)}",
        f"client_id = \"{AGGREGATOR}\"",
        *credentials,
        "",
        "[aggregator]",
        "store = \"store\"",
        f"summing_workers = {summing_workers}   # masked inputs summed in N worker processes (0: in-process)",
        *(["initial = \"initial.fedmq\""] if initial is not None else ["# initial = \"initial.fedmq\""]),
        "",
        "[enrolment]",
        "# The signed enrolled set `fedmq enroll`/`revoke` rewrite; watched and re-published live.",
        "list = \"../enrolment.fedmq\"",
        f"authority_key = \"{bytes(authority.verify_key).hex()}\"",
        "",
        "[rounds]",
        "min_clients = 2",
        "target_clients = 10",
        "masked_window = 30.0",
        "",
        "[metrics]",
        "# listen = \"127.0.0.1:9464\"     # Prometheus /metrics and /healthz",
        "",
    ]
    (aggregator_dir / "aggregator.toml").write_text("\n".join(lines))
    return fed
