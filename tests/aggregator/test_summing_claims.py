"""The summing workers' bookkeeping without processes: each device counted once and only while the masked
phase is open (coordinator), a worker adding a vector only on a grant, relaying manifests, refusing bad
input with a rule (worker)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from aggregator.summing import SummingPool, _Round, _Slot
from aggregator.summing_worker import Worker
from shared.chunking import split
from shared.codec import pack
from shared.offences import Offences
from shared.secagg import keys
from shared.secagg.claims import MaskedClaims
from shared.secagg.exclusion import Exclusion
from shared.wire import decode, encode
from shared.wire.secagg import MaskedInput
from simulator.light import device_key, device_name

FED, ROUND, BITS, LENGTH = "f", 3, 16, 64


class Claims(MaskedClaims):
    def __init__(self, shared: set[str]) -> None:
        self.phase = "mask"
        self.shared = frozenset(shared)
        self.bits, self.length = BITS, LENGTH
        self.graph = {d: tuple(sorted(shared - {d})) for d in shared}
        self.exclusion = Exclusion(FED, ROUND, Offences())
        self._masked_from: set[str] = set()
        self._sum = np.zeros(LENGTH, np.uint32)


def test_a_device_counts_once_only_from_u2_and_only_while_the_phase_is_open():
    claims = Claims({"a", "b", "c"})
    assert claims.claim_masked("a") and not claims.claim_masked("a")  # the copy another worker saw
    assert not claims.claim_masked("z")  # outside U2
    claims.release_masked(frozenset({"a"}))  # its worker died: a dropout, and may come again
    assert claims.claim_masked("a")
    claims.phase = "unmask"
    assert not claims.claim_masked("b")  # after the close
    claims.release_masked(frozenset({"a"}))
    assert claims._masked_from == {"a"}  # U3 is signed: nothing is taken back
    claims.add_partial_sum(np.full(LENGTH, 2**32 - 1, np.uint32))
    claims.add_partial_sum(np.full(LENGTH, 3, np.uint32))
    assert (claims._sum == 2).all()  # modulo 2^32


def test_the_coordinator_grants_each_claim_once_and_none_after_collect_starts():
    claims = Claims({"a", "b"})
    woken: list[int] = []
    secure = SimpleNamespace(round_id=ROUND, federation=FED, server=claims, wake=lambda: woken.append(1))
    pool = SummingPool.__new__(SummingPool)
    pool.round = _Round(secure, ("open",))  # type: ignore[arg-type]
    sent: dict[int, list[tuple]] = {0: [], 1: []}
    slots = [_Slot(0), _Slot(1)]
    for slot in slots:
        slot.send = sent[slot.index].append  # type: ignore[method-assign]
    pool._on_frame(slots[0], ["claim", ROUND, "a", b"packed-a", ["b"]])
    pool._on_frame(slots[1], ["claim", ROUND, "a", b"other", []])  # a duplicate the other worker got
    pool._on_frame(slots[1], ["claim", ROUND - 1, "b", b"", []])  # an old round's
    assert sent[0] == [("grant", ROUND, "a", True)]
    assert sent[1] == [("grant", ROUND, "a", False), ("grant", ROUND - 1, "b", False)]
    assert slots[0].granted == {"a"} and slots[1].granted == set() and woken == [1]
    # Kept as the in-process path keeps it: the payload (to subtract if "a" is excluded) and its report.
    assert claims.exclusion.kept["a"].payload == b"packed-a" and claims.exclusion.refusals == {"b": {"a"}}
    pool.round.closing = True  # collect() has asked for the sums
    pool._on_frame(slots[1], ["claim", ROUND, "b", b"", []])
    assert sent[1][-1] == ("grant", ROUND, "b", False) and claims._masked_from == {"a"}


def _input(i: int, round_id: int = ROUND) -> tuple[bytes, np.ndarray]:
    vector = np.random.default_rng(i).integers(0, 1 << BITS, LENGTH, dtype=np.uint32)
    unsigned = MaskedInput(FED, round_id, device_name(i), pack(vector, BITS), BITS, LENGTH)
    signed = replace(unsigned, signature=keys.sign(device_key(i), unsigned.signed_bytes()))
    return encode(signed), vector


def test_a_worker_adds_only_granted_vectors_and_reports_exactly_them():
    out: list[tuple] = []
    worker = Worker({"federation": FED, "max_update_bytes": 1 << 20}, out.append)
    identities = {device_name(i): bytes(device_key(i).verify_key) for i in range(3)}
    worker.on_control(("open", ROUND, FED, identities, BITS, LENGTH))
    assert out.pop() == ("opened", ROUND)
    topic = f"fl/{FED}/r/{ROUND}/masked/"
    inputs = [_input(i) for i in range(3)]
    for i, (data, _) in enumerate(inputs):
        worker.on_message(topic + device_name(i), data)
    worker.on_message(topic + device_name(0), inputs[0][0])  # a duplicate while the claim is pending
    assert [m[:3] for m in out] == [("claim", ROUND, device_name(i)) for i in range(3)]
    assert [m[3] for m in out] == [decode(data, MaskedInput).payload for data, _ in inputs]
    out.clear()
    worker.on_control(("grant", ROUND, device_name(0), True))
    worker.on_control(("grant", ROUND, device_name(1), False))  # counted elsewhere, or too late
    worker.on_control(("grant", ROUND, device_name(2), True))
    worker.on_control(("finish", ROUND))
    ((kind, round_id, data, devices),) = out
    assert (kind, round_id, devices) == ("sum", ROUND, [device_name(0), device_name(2)])
    expected = (inputs[0][1] + inputs[2][1]).astype(np.uint32)
    np.testing.assert_array_equal(np.frombuffer(data, np.uint32), expected)


def test_a_worker_relays_manifests_and_refuses_bad_input_with_its_rule():
    out: list[tuple] = []
    worker = Worker({"federation": FED, "max_update_bytes": 1 << 20}, out.append)
    identities = {device_name(i): bytes(device_key(i).verify_key) for i in range(2)}
    worker.on_control(("open", ROUND, FED, identities, BITS, LENGTH))
    out.clear()
    topic = f"fl/{FED}/r/{ROUND}/masked/"
    data, _ = _input(0)
    manifest = split(data, 128)[0].payload
    worker.on_message(topic + device_name(0), manifest)
    assert out.pop() == ("relay", topic + device_name(0), manifest)
    worker.on_message(topic + device_name(1), data)  # device 0's input on device 1's topic
    worker.on_message(topic + device_name(0), _input(0, ROUND + 1)[0])  # another round's, on this topic
    worker.on_message(f"fl/{FED}/r/{ROUND + 1}/masked/" + device_name(0), _input(0, ROUND + 1)[0])
    worker.on_message(topic + device_name(0), b"\x93garbage")
    worker.on_message(topic + device_name(5), _input(5)[0])  # not in U2
    assert [m[0] for m in out] == ["refusal"] * 5
    assert [m[1] for m in out] == [device_name(i) for i in (1, 0, 0, 0, 5)]
    assert all(m[2] in ("SecAggError", "ProtocolError", "WireError") for m in out), out
    assert not worker.pending and worker.total is not None and not worker.total.devices
