"""Ed25519 signatures over wire messages that carry a ``signature`` field.

The signed bytes are the message's own wire encoding with an empty signature, so any client that can
encode msgpack can verify without a second canonical form.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TypeVar

import nacl.exceptions
import nacl.signing

from shared.errors import ConfigError, ProtocolError
from shared.wire import Message, encode

S = TypeVar("S", bound=Message)


def signing_bytes(msg: Message) -> bytes:
    return encode(dataclasses.replace(msg, signature=b""))  # type: ignore[type-var]


def sign(msg: S, key: nacl.signing.SigningKey) -> S:
    return dataclasses.replace(msg, signature=key.sign(signing_bytes(msg)).signature)  # type: ignore[type-var]


def verify(msg: Message, key: nacl.signing.VerifyKey) -> None:
    """Raise ProtocolError unless ``msg`` carries a valid signature by ``key``."""
    signature = getattr(msg, "signature", b"")
    if not signature:
        raise ProtocolError(f"{msg.TYPE} message is not signed")
    try:
        key.verify(signing_bytes(msg), signature)
    except nacl.exceptions.BadSignatureError as exc:
        raise ProtocolError(f"{msg.TYPE} message has a bad signature") from exc


def load_or_create_key(path: Path) -> nacl.signing.SigningKey:
    """The Ed25519 key stored at ``path`` (raw 32-byte seed, mode 0600), created on first use."""
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ProtocolError(f"signing key file {path} must hold 32 bytes, has {len(seed)}")
        return nacl.signing.SigningKey(seed)
    key = nacl.signing.SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(key))
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def read_directory(path: Path) -> dict[str, bytes]:
    """An enrolment directory file: JSON ``{device id: hex Ed25519 public key}``."""
    try:
        entries = json.loads(Path(path).read_text())
        directory = {str(cid): bytes.fromhex(key) for cid, key in entries.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError("directory", f"{path} is not a JSON map of device id to hex key: {exc}") from exc
    for cid, key in directory.items():
        if len(key) != 32:
            raise ConfigError("directory", f"key of {cid!r} in {path} is not 32 bytes")
    return directory
