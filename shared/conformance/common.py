"""Deterministic inputs, JSON helpers and fixed identities shared by every vector section."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from unittest import mock

import nacl.bindings
import nacl.public
import nacl.signing
import numpy as np

from shared.secagg import keys, shamir
from shared.wire import (
    Message,
    encode,
)

#: Bumped when the layout of the vector files changes (not when the protocol does: that shows as a diff).
VECTORS_VERSION = 1
FED = "demo"
_PERSON = b"fedmq.vectors"


# -- deterministic inputs --------------------------------------------------------------------------------


def drbg(label: str, size: int) -> bytes:
    """``size`` bytes of ChaCha20 output keyed by BLAKE2b(label): the vectors' only source of "randomness"."""
    seed = hashlib.blake2b(label.encode(), digest_size=32, person=_PERSON).digest()
    return nacl.bindings.randombytes_buf_deterministic(size, seed)


def field_element(label: str) -> int:
    """A Shamir coefficient as the product draws one: 48 bytes, little-endian, mod p."""
    return int.from_bytes(drbg(label, 48), "little") % shamir.PRIME


def uniforms(label: str, count: int) -> np.ndarray:
    """Stochastic-rounding draws in [0, 1) (the product uses the device's private numpy generator)."""
    seed = int.from_bytes(drbg(label, 16), "little")
    return np.random.default_rng(seed).random(count)


class _Replay:
    """A stand-in for ``np.random.Generator`` that hands out pre-drawn uniforms in order."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = values
        self._at = 0

    def random(self, size: int) -> np.ndarray:
        out = self._values[self._at : self._at + size]
        if out.size != size:
            raise ValueError("replayed uniforms exhausted")
        self._at += size
        return out


def _replay(values: np.ndarray) -> np.random.Generator:
    """:class:`_Replay` where the encoder expects a generator (it only calls ``random(size)``)."""
    return cast(np.random.Generator, _Replay(values))


@contextmanager
def _coefficients(values: list[int]) -> Iterator[None]:
    """Make ``shamir.split`` draw its random coefficients from ``values`` (in call order)."""
    feed = iter(values)
    with mock.patch.object(shamir, "_random_field_element", lambda: next(feed)):
        yield


# -- JSON helpers ----------------------------------------------------------------------------------------


def hx(data: bytes) -> str:
    return bytes(data).hex()


def f32_hex(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f4").tobytes().hex()


def f64_hex(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f8").tobytes().hex()


def typed(value: Any) -> Any:
    """A wire value as typed JSON: ``{"bin": hex}`` for bytes, ``{"float": x}`` for floats."""
    if isinstance(value, (bytes, bytearray)):
        return {"bin": bytes(value).hex()}
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return {"float": value}
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return {f.name: typed(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise TypeError(f"no typed JSON form for {type(value).__name__}")


def message_case(name: str, msg: Message) -> dict[str, Any]:
    """One message: its type, its fields (typed, in wire order) and its canonical msgpack bytes."""
    return {"name": name, "type": msg.TYPE, "fields": typed(msg), "msgpack": hx(encode(msg))}


# -- fixed identities ------------------------------------------------------------------------------------


def identity(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(drbg(f"identity/{name}", 32))


def round_keys(name: str, round_id: int) -> keys.RoundKeys:
    return keys.RoundKeys(
        enc_sk=nacl.public.PrivateKey(drbg(f"enc/{name}/{round_id}", 32)),
        mask_sk=drbg(f"mask/{name}/{round_id}", 32),
        self_mask=drbg(f"self/{name}/{round_id}", 32),
    )
