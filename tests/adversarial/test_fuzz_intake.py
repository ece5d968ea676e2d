"""Property-based fuzzing of what an enrolled device can send: every inbound topic string and every
secure-round message type, mutated or made up, fed through the aggregator's decoding and the SecAgg+
core. Nothing but a typed error (FedmqError) may come out, and the honest round that follows is exact."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.chunking import Reassembler
from shared.errors import FedmqError
from shared.secagg import RoundAbandoned, SecAggClient, SecAggServer, generate_identity
from shared.topics import Topics
from shared.wire import decode, encode
from shared.wire.secagg import AdvertiseKeys, MaskedInput, ShareBatch, UnmaskReveal

FED = "fuzz"
N, LENGTH, BITS = 5, 16, 16
TOPICS = Topics(FED)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Round:
    def __init__(self) -> None:
        self.aggregator = generate_identity()
        self.identities = {f"dev-{i}": generate_identity() for i in range(N)}
        self.directory = {d: bytes(k.verify_key) for d, k in self.identities.items()}
        self.clients = {
            d: SecAggClient(FED, d, k, bytes(self.aggregator.verify_key), self.directory)
            for d, k in self.identities.items()
        }
        self.server = SecAggServer(FED, 1, self.aggregator, self.directory, BITS, LENGTH, delta=0.2, gamma=0)
        self.reassembler = Reassembler(max_total=1 << 20)
        rng = np.random.default_rng(3)
        self.inputs = {d: rng.integers(0, 1 << BITS, LENGTH).astype(np.uint32) for d in self.clients}

    def feed(self, kind: str, sender: str, payload: bytes) -> None:
        """Decode like the aggregator's intake, then hand the message to the core for its phase."""
        msg = self.reassembler.feed(f"1/{kind}/{sender}", None, payload, 1 << 20)
        if msg is None:
            return
        if getattr(msg, "device", None) != sender:
            return  # the intake refuses a message whose device is not its topic's sender
        if isinstance(msg, AdvertiseKeys) and self.server.phase == "advertise":
            self.server.add_advert(msg)
        elif isinstance(msg, ShareBatch) and self.server.phase == "share":
            for bundle in msg.sent_bundles():
                self.server.add_shares(bundle)
        elif isinstance(msg, MaskedInput) and self.server.phase == "mask":
            self.server.add_masked(msg)
        elif isinstance(msg, UnmaskReveal) and self.server.phase == "unmask":
            self.server.add_reveal(msg)


def _mutations() -> st.SearchStrategy:
    return st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(0, 10**6),
            st.binary(max_size=8),
        ),
        min_size=1,
        max_size=6,
    )


def _mutate(payload: bytes, mutations) -> bytes:
    data = bytearray(payload)
    for op, where, blob in mutations:
        i = where % (len(data) + 1)
        if op == "flip" and data:
            data[i % len(data)] ^= 1 << (where % 8)
        elif op == "insert":
            data[i:i] = blob
        elif op == "delete":
            del data[i : i + 1 + where % 4]
        else:
            del data[i:]
    return bytes(data)


def _fuzzed(fuzz, round_: Round, kind: str, sender: str, payload: bytes) -> None:
    with contextlib.suppress(FedmqError):  # a typed refusal is the only acceptable failure
        round_.feed(kind, sender, fuzz(payload))


def _run(round_: Round, fuzz, rogue: str) -> np.ndarray:
    """One round where ``rogue`` sends a fuzzed copy of each of its messages before the real one.

    The rogue may well spoil its own participation (say, a fuzzed advert that is valid); honest devices
    never refuse a step, and the sum must be exactly that of the survivors' inputs.
    """

    def step(device: str, action) -> None:  # type: ignore[no-untyped-def]
        if device != rogue:
            action()
            return
        with contextlib.suppress(FedmqError):
            action()

    for d, client in round_.clients.items():
        advert = encode(client.advertise(1))
        if d == rogue:
            _fuzzed(fuzz, round_, "keys", d, advert)
        step(d, lambda a=advert, d=d: round_.feed("keys", d, a))
    roster = round_.server.make_roster()
    members = {m.device for m in roster.members}
    for d, client in round_.clients.items():
        if d not in members:
            continue

        def share(d=d, client=client) -> None:
            batch = encode(ShareBatch.outgoing(FED, 1, d, client.on_roster(roster)))
            if d == rogue:
                _fuzzed(fuzz, round_, "shares", d, batch)
            round_.feed("shares", d, batch)

        step(d, share)
    shared = round_.server.close_share_phase()
    for d in shared.devices:

        def mask(d=d) -> None:
            round_.clients[d].open_all(round_.server.shares_for(d))
            y = round_.clients[d].mask(round_.inputs[d], shared)
            masked = encode(round_.clients[d].masked_input(y.astype("<u4").tobytes()))
            if d == rogue:
                _fuzzed(fuzz, round_, "masked", d, masked)
            round_.feed("masked", d, masked)

        step(d, mask)
    survivors = round_.server.close_masked_phase()
    for d in survivors.devices:

        def reveal(d=d) -> None:
            payload = encode(round_.clients[d].on_survivors(survivors))
            if d == rogue:
                _fuzzed(fuzz, round_, "unmask", d, payload)
            round_.feed("unmask", d, payload)

        step(d, reveal)
    return round_.server.unmask()


def _closes_exactly_or_blames_only_the_rogue(round_: Round, fuzz) -> None:
    """The invariant: the exact sum of the survivors, or (bad bundles of its own, docs/security.md) an
    abandoned round that names the rogue and nobody else."""
    try:
        total = _run(round_, fuzz, "dev-2")
    except RoundAbandoned as exc:
        assert "dev-2" in str(exc)
        assert set(round_.server.offences.senders()) == {"dev-2"}
        return
    np.testing.assert_array_equal(total, _expected(round_))
    assert set(round_.server.offences.senders()) <= {"dev-2"}


def _expected(round_: Round) -> np.ndarray:
    """The exact sum of the survivors' inputs, which must include every honest device."""
    assert set(round_.clients) - {"dev-2"} <= set(round_.server.masked)
    survivors = [round_.inputs[d].astype(np.uint64) for d in round_.server.masked]
    return (sum(survivors) % (1 << BITS)).astype(np.uint32)


@FUZZ
@given(mutations=_mutations())
def test_mutated_messages_never_crash_and_the_round_stays_exact(mutations) -> None:
    _closes_exactly_or_blames_only_the_rogue(Round(), lambda payload: _mutate(payload, mutations))


SECURE_TYPES = ["secagg.advertise_keys", "secagg.share_batch", "secagg.masked_input", "secagg.unmask_reveal"]
FIELD_NAMES = ["federation", "round", "device", "enc_pk", "mask_pk", "self_mask_commitment", "signature",
               "ciphertexts", "digests", "payload", "bits", "length", "self_mask_shares", "mask_key_shares",
               "extra"]  # fmt: skip
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(
    kind=st.sampled_from(SECURE_TYPES),
    fields=st.dictionaries(
        st.sampled_from(FIELD_NAMES),
        _VALUES,
        max_size=8,
    ),
    keep=st.booleans(),
)  # fmt: skip
def test_made_up_messages_of_every_secure_type_are_refused_with_a_typed_error(kind, fields, keep) -> None:
    """Structured garbage: right type name, fields of any msgpack type (optionally over a valid message)."""
    round_ = Round()
    base: dict = {}
    if keep:  # another advert of the rogue's, with other keys
        other = SecAggClient(
            FED, "dev-2", round_.identities["dev-2"], bytes(round_.aggregator.verify_key), round_.directory
        )
        base = msgpack.unpackb(encode(other.advertise(1)), raw=False)
    body = {**base, **fields, "v": 1, "t": kind}

    def fuzz(_payload: bytes) -> bytes:
        return msgpack.packb(body, use_bin_type=True)

    _closes_exactly_or_blames_only_the_rogue(round_, fuzz)


@settings(max_examples=400, deadline=None)
@given(
    topic=st.one_of(st.text(max_size=80), st.builds(lambda tail: f"fl/{FED}/r/{tail}", st.text(max_size=40)))
)
def test_any_topic_string_is_parsed_or_refused_with_a_typed_error(topic: str) -> None:
    for parse in (TOPICS.parse_round, TOPICS.parse_status, lambda t: TOPICS.parse_inbox("dev-1", t)):
        with contextlib.suppress(FedmqError):
            parse(topic)


def test_a_reveal_signed_by_the_rogue_for_another_device_is_refused() -> None:
    """Spoofing: the rogue signs a reveal naming another device; the signature check refuses it."""
    round_ = Round()

    def spoof(payload: bytes) -> bytes:
        msg = decode(payload)
        if isinstance(msg, UnmaskReveal):
            return encode(replace(msg, device="dev-3"))
        return payload

    total = _run(round_, spoof, "dev-2")
    np.testing.assert_array_equal(total, _expected(round_))
