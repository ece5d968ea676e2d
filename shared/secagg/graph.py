"""The SecAgg+ neighbour graph: who masks with, and holds shares for, whom.

Bell et al. (CCS 2020, §3-4) replace SecAgg's complete graph by a sparse random graph of degree
k = O(log n): each device agrees pairwise masks with, and Shamir-shares its secrets among, only its k
neighbours, which cuts device cost from O(n) to O(log n) and server cost from O(n^2) to O(n log n).

We use their practical construction: a Harary graph H(k, n) (each node linked to the k/2 nearest nodes
on each side of a ring) laid over a *random permutation* of the devices. It is exactly k-regular,
symmetric and, once the permutation is random, every device's neighbourhood is a uniformly random
k-subset in distribution for the purposes of the tail bounds used in :mod:`shared.secagg.params`.

The permutation comes from a public 32-byte seed: devices are sorted by ``BLAKE2b(key=seed, id)``,
which every party computes identically on any platform (no dependence on a library's RNG stream).
The seed itself is derived from the roster (:func:`graph_seed`): every member's id and the digest of its
signed advert (:func:`shared.secagg.roster.advert_digest`), so devices recompute it from the full or the
compact roster alike and an aggregator cannot pick a graph freely (docs/security.md, "Compact roster").
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence

import msgpack

from shared.errors import SecAggError

_ORDER_PERSON = b"fedmq.sa.graph1"
_SEED_PERSON = b"fedmq.sa.gseed2"


def graph_seed(federation: str, round_id: int, members: Iterable[tuple[str, bytes]]) -> bytes:
    """Public graph seed bound to the round and to every member's (id, digest of its signed advert).

    The digest binds the member's keys, commitment and signature, so the seed is as bound to the keys as
    a hash over the keys themselves, yet computable from the compact roster's ~27 B per member.
    """
    rows = sorted((device, digest) for device, digest in members)
    body = msgpack.packb(["graph2", federation, round_id, rows], use_bin_type=True)
    return hashlib.blake2b(body, digest_size=32, person=_SEED_PERSON).digest()


def neighbour_graph(members: Sequence[str], k: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Symmetric neighbour lists (each sorted by id) of a Harary graph over a seeded permutation.

    ``k >= len(members) - 1`` gives the complete graph (classic SecAgg). Otherwise ``k`` must be even
    and >= 2.
    """
    ids = sorted(set(members))
    if len(ids) != len(members):
        raise SecAggError("neighbour graph: device ids must be unique")
    n = len(ids)
    if n < 2:
        raise SecAggError(f"neighbour graph needs at least 2 devices, got {n}")
    if len(seed) != 32:
        raise SecAggError("neighbour graph seed must be 32 bytes")
    if k >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    if k < 2 or k % 2:
        raise SecAggError(f"sparse neighbour graph needs an even degree >= 2, got {k}")
    ring = seeded_ring(ids, seed)
    neighbours: dict[str, set[str]] = {u: set() for u in ids}
    for i, u in enumerate(ring):
        for step in range(1, k // 2 + 1):
            v = ring[(i + step) % n]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in neighbours.items()}


def seeded_ring(ids: Sequence[str], seed: bytes) -> list[str]:
    """The devices in ring order: sorted by ``BLAKE2b(key=seed, id)``."""
    return sorted(ids, key=lambda d: hashlib.blake2b(d.encode(), key=seed, person=_ORDER_PERSON).digest())


def neighbours_of(members: Sequence[str], k: int, seed: bytes, device: str) -> tuple[str, ...]:
    """``neighbour_graph(members, k, seed)[device]`` without building the whole graph: a device needs
    only its own k/2 ring positions on each side (O(n log n) for the ring, O(k) for the rest)."""
    ids = sorted(set(members))
    if len(ids) != len(members) or device not in ids:
        raise SecAggError("neighbours_of: ids must be unique and include the device")
    if len(ids) < 2 or len(seed) != 32:
        raise SecAggError("neighbours_of: needs at least 2 devices and a 32-byte seed")
    n = len(ids)
    if k >= n - 1:
        return tuple(v for v in ids if v != device)
    if k < 2 or k % 2:
        raise SecAggError(f"sparse neighbour graph needs an even degree >= 2, got {k}")
    ring = seeded_ring(ids, seed)
    i = ring.index(device)
    steps = range(1, k // 2 + 1)
    return tuple(sorted({ring[(i + s) % n] for s in steps} | {ring[(i - s) % n] for s in steps}))


def share_index(graph: dict[str, tuple[str, ...]], owner: str, holder: str) -> int:
    """Shamir x-coordinate (1-based) of the share of ``owner``'s secrets held by ``holder``."""
    try:
        return graph[owner].index(holder) + 1
    except (KeyError, ValueError) as exc:
        raise SecAggError(f"{holder!r} is not a neighbour of {owner!r}") from exc


def round_recoverable(
    graph: Mapping[str, Sequence[str]], threshold: int, shared: Collection[str], survivors: Collection[str]
) -> bool:
    """Whether the aggregator can unmask when ``shared`` (U2) delivered shares and ``survivors`` (U3 that
    also reveal) stay to the end (Bell et al. §4 correctness condition).

    Every survivor needs ``threshold`` surviving neighbours: they hold the shares of its self-mask seed,
    and each survivor itself refuses to reveal with fewer. Every device that shared but dropped before
    the end needs ``threshold`` surviving neighbours holding shares of its mask key, if any survivor
    masked with it. The aggregation threshold ``|U3| >= threshold`` is implied.
    """
    return unmask_obstacle(graph, threshold, shared, survivors) is None


def unmask_obstacle(
    graph: Mapping[str, Sequence[str]], threshold: int, shared: Collection[str], survivors: Collection[str]
) -> str | None:
    """Why the round cannot unmask with these survivors (None when it can): the reason
    :func:`round_recoverable` is false, naming the first device short of surviving neighbours, so an
    abandoned round's log says what was missing rather than only that something was."""
    alive = set(survivors)
    if len(alive) < threshold:
        return f"{len(alive)} survivors, threshold {threshold}"
    for u in sorted(shared):
        live = sum(1 for v in graph[u] if v in alive)
        if u in alive and live < threshold:
            return f"survivor {u!r} has {live} surviving neighbours, needs {threshold} to reveal"
        if u not in alive and 0 < live < threshold:
            return f"dropped {u!r} has {live} surviving neighbours, needs {threshold} to rebuild its mask key"
    return None


def threshold_core(
    graph: Mapping[str, Sequence[str]], threshold: int, members: Collection[str]
) -> frozenset[str]:
    """The largest subset of ``members`` in which everyone has ``threshold`` neighbours inside it.

    A device refuses to mask when fewer than ``threshold`` of its neighbours are in the shared set U2 (it
    could never be unmasked), so a U2 wider than this core only adds devices that will drop out and whose
    mask keys the survivors would then have to reveal. Peeling the devices short of neighbours (repeatedly:
    each removal can starve another) gives the set that can actually mask together; in the complete graph
    with exactly ``threshold`` members it is empty, as each has only ``threshold - 1`` others.
    """
    core = set(members)
    changed = True
    while changed:
        changed = False
        for u in sorted(core):
            if sum(1 for v in graph[u] if v in core) < threshold:
                core.discard(u)
                changed = True
    return frozenset(core)
