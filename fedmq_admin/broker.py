"""Render a Mosquitto configuration for one federation: TLS listener, accounts, ACL.

Why rendered and not shipped: a secure federation needs per-deployment facts (host names in the server
certificate, one account per device, the listener address), and hand-editing them is where the first
operator got stuck. The ACL rules are ``broker_config/acl.conf``'s, rendered for the federation and its
accounts (``fedmq_admin.acl``: one place states them);
accounts are Mosquitto's ``$7$`` PBKDF2-SHA512 password hashes, written here so the admin machine does
not need ``mosquitto_passwd``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aggregator.summing import worker_account
from fedmq_admin import acl

#: Mosquitto 2.x's default PBKDF2 iteration count for ``$7$`` hashes.
PBKDF2_ITERATIONS = 101


def acl_rules(
    summing_workers: int = 0,
    aggregator: str = "aggregator",
    *,
    federation: str = acl.SHIPPED_FEDERATION,
    devices: Iterable[str] | None = None,
) -> str:
    """The shipped ACL (``broker_config/acl.conf``) for ``federation`` (``fedmq_admin.acl``): its
    patterns kept (a broker of one federation), or, given the enrolled ``devices``, written out as one
    block per account (what ``fedmq init``/``enroll`` render); plus one read-only account per summing
    worker of ``aggregator`` (:func:`summing_worker_acl`)."""
    if devices is None:
        rules = acl.scoped(federation, aggregator=aggregator)
    else:
        rules = acl.per_account(federation, devices, aggregator=aggregator)
    return rules + summing_worker_acl(summing_workers, aggregator, federation=federation)


def summing_worker_acl(
    workers: int, aggregator: str = "aggregator", *, federation: str = acl.SHIPPED_FEDERATION
) -> str:
    """ACL lines of the aggregator's summing workers (``summing_workers = N``): each its own account
    (the broker binds client id to account), reading the masked inputs only -- Mosquitto checks a
    ``$share/<group>/<filter>`` subscription and its deliveries against the plain filter."""
    if not workers:
        return ""
    lines = ["", f"# Summing workers of {aggregator!r}: their shared subscription to the masked inputs."]
    for index in range(workers):
        lines += [f"user {worker_account(aggregator, index)}", f"topic read fl/{federation}/r/+/masked/+"]
    return "\n".join(lines) + "\n"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto ``$7$`` password hash (PBKDF2-HMAC-SHA512, 12-byte salt, 101 iterations)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def read_passwd(path: Path) -> dict[str, str]:
    """``{user: hash}`` of a Mosquitto password file (missing file: empty)."""
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and ":" in line:
            user, _, digest = line.partition(":")
            entries[user] = digest
    return entries


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def write_passwd(path: Path, entries: dict[str, str]) -> None:
    write_private(path, "".join(f"{user}:{digest}\n" for user, digest in sorted(entries.items())))


def revoked_acl(revoked: list[str]) -> str:
    """ACL blocks that deny every topic to revoked accounts (appended after the shipped rules).

    A ``deny`` matching a user's own block wins over the ``pattern`` grants, and Mosquitto re-reads the
    ACL on SIGHUP and applies it to the next publish or subscription of connections that are already
    open -- which matters for certificate identities, whose live sessions a reload does not end.
    """
    if not revoked:
        return ""
    blocks = [f"user {device}\ntopic deny #" for device in sorted(revoked)]
    return "\n# Revoked accounts (`fedmq revoke`): nothing, on any topic.\n" + "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Listener:
    """How the rendered broker listens and authenticates."""

    port: int
    bind: str | None  # None: every interface
    tls: bool
    client_certs: bool  # mTLS: the certificate's common name is the account


def render_conf(
    *, root: Path, listener: Listener, data_dir: Path, log_dest: str = "stdout", user: str | None = None
) -> str:
    """``mosquitto.conf`` for files under ``root`` (the paths the broker will see)."""
    lines = [
        "# fedmq broker for one federation, rendered by `fedmq init` / `fedmq render-broker`.",
        "# Accounts: passwd (one per device, plus the aggregator); rules: acl (broker_config/acl.conf).",
    ]
    if user:
        lines.append(f"user {user}")
    address = f" {listener.bind}" if listener.bind else ""
    lines += ["per_listener_settings false", f"listener {listener.port}{address}"]
    if listener.tls:
        lines += [
            f"cafile {root / 'ca.crt'}",
            f"certfile {root / 'server.crt'}",
            f"keyfile {root / 'server.key'}",
            "tls_version tlsv1.2",
        ]
        if listener.client_certs:
            lines += [
                "require_certificate true",
                "use_identity_as_username true",
                f"crlfile {root / 'crl.pem'}",  # revoked device certificates (`fedmq revoke`)
            ]
    lines += ["allow_anonymous false"]
    if not listener.client_certs:
        lines.append(f"password_file {root / 'passwd'}")
    lines += [
        f"acl_file {root / 'acl'}",
        "",
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 30",
        "persistent_client_expiration 7d",
        "max_queued_messages 10000",
        "max_queued_bytes 0",
        "max_inflight_messages 50",
        "message_size_limit 8388608",
        "",
        f"log_dest {log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
    ]
    return "\n".join(lines)
