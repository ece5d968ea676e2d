"""Generic, defensive msgpack codec for fedmq's message dataclasses.

A message is a frozen dataclass registered with :func:`message`. On the wire it is a msgpack map
``{"v": SCHEMA_VERSION, "t": <type>, <field>: <value>, ...}``: binary data travels as msgpack ``bin``,
never as lists of numbers, so any msgpack library on any device can read it. Decoding is bounded
(every msgpack length limit is set), strict (field types are checked against the dataclass annotations,
unknown fields and unknown types are refused) and raises exactly one error type, :class:`WireError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union, cast

import msgpack

from shared.errors import WireError

#: The envelope's version; a decoder refuses every other one rather than misread it. Message bodies
#: that change shape carry their own version too (``RoundAnnounce.plan.version``, see shared/plan.py).
SCHEMA_VERSION = 1
#: Largest payload a decoder accepts by default. Larger updates travel chunked (``shared.chunking``).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

_REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type, dict[str, Any]] = {}

M = TypeVar("M", bound="Message")


class Message:
    """Base of all wire messages; ``TYPE`` is set by :func:`message`."""

    TYPE: ClassVar[str] = ""


def message(type_name: str) -> Callable[[type[M]], type[M]]:
    """Register a frozen dataclass as the wire message ``type_name``."""

    def register(cls: type[M]) -> type[M]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
            raise TypeError(f"wire type {type_name!r} registered twice")
        cls.TYPE = type_name
        _REGISTRY[type_name] = cls
        return cls

    return register


def registered_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _float_field(hint: Any) -> bool:
    """Is ``hint`` ``float`` or ``float | None``? (Such fields always travel as msgpack floats.)"""
    if hint is float:
        return True
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else ()
    return float in args and all(a in (float, type(None)) for a in args)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = _hints(type(value))
        plain = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if _float_field(hints[f.name]) and isinstance(item, int) and not isinstance(item, bool):
                # An int in a float field is sent as the float it decodes to, so that a receiver that
                # re-encodes a signed message (to check the signature) gets the same bytes.
                item = float(item)
            plain[f.name] = _to_plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def encode(msg: Message) -> bytes:
    """Serialise a registered message to msgpack bytes."""
    if type(msg).TYPE not in _REGISTRY:
        raise WireError(f"{type(msg).__name__} is not a registered wire message")
    body = _to_plain(msg)
    body["v"] = SCHEMA_VERSION
    body["t"] = msg.TYPE
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _check(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise WireError naming ``where``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except WireError as exc:
                errors.append(str(exc))
        raise WireError(f"{where}: no alternative of {hint} fits ({'; '.join(errors)})")
    if hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{where}: expected bool, got {type(value).__name__}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(f"{where}: expected int, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{where}: expected float, got {type(value).__name__}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise WireError(f"{where}: expected str, got {type(value).__name__}")
        return value
    if hint is bytes:
        if not isinstance(value, bytes):
            raise WireError(f"{where}: expected bin, got {type(value).__name__}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise WireError(f"{where}: expected array, got {type(value).__name__}")
        args = typing.get_args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise WireError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected map, got {type(value).__name__}")
        key_hint, val_hint = typing.get_args(hint) or (Any, Any)
        return {
            _check(k, key_hint, f"{where} key"): _check(v, val_hint, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected map for {hint.__name__}, got {type(value).__name__}")
        return _build(hint, value, where)
    raise WireError(f"{where}: unsupported field type {hint!r}")


def _build(cls: type, body: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(body) - set(fields)
    if unknown:
        raise WireError(f"{where}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in body:
            has_default = (
                field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise WireError(f"{where}: missing field {name!r}")
        kwargs[name] = _check(body[name], hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise WireError(f"{where}: {exc}") from exc


def unpack_map(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Bounded msgpack decoding of a map; raises WireError on anything else."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise WireError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=64 * 1024,
            max_array_len=1_000_000,
            max_map_len=100_000,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise WireError(f"not valid msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict):
        raise WireError(f"top level must be a map, got {type(body).__name__}")
    return body


def decode(
    payload: bytes,
    expected: type[M] | tuple[type[Message], ...] | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> M:
    """Decode ``payload`` into its registered message, optionally insisting on ``expected`` types."""
    body = unpack_map(payload, max_bytes)
    version = body.pop("v", None)
    if version != SCHEMA_VERSION:
        raise WireError(f"unsupported schema version {version!r} (this build speaks {SCHEMA_VERSION})")
    type_name = body.pop("t", None)
    cls = _REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise WireError(f"unknown message type {type_name!r}")
    if expected is not None:
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if cls not in allowed:
            names = ", ".join(c.TYPE for c in allowed)
            raise WireError(f"expected a {names} message, got {type_name!r}")
    return cast(M, _build(cls, body, type_name))
