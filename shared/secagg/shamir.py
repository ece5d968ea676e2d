"""t-out-of-k Shamir secret sharing of 32-byte secrets over GF(2^256 + 297).

Used exactly as in Bonawitz et al. CCS 2017 §3 ("Secret sharing") and §4 rounds 1 and 4: each device
shares its self-mask seed ``b_u`` and its mask secret key with its neighbours; any ``t`` shares rebuild
a secret, ``t - 1`` reveal nothing about it (information-theoretically).

Why this field: p = 2^256 + 297 is the smallest prime above 2^256, so every 32-byte secret is a field
element without splitting and a share fits in 33 bytes (the smallest a 256-bit secret allows; a share
is sent to every neighbour and revealed again at unmasking, so its size is most of SecAgg+'s per-device
overhead). A wrong reconstruction (a corrupted or mismatched share) is still a field element, so the
aggregator checks every rebuilt secret against what the owner committed to in its advert (the self-mask
commitment, the mask public key) and tries other share subsets if it fails. Python's big ints do the
arithmetic. Reconstruction uses exactly ``t`` shares and Lagrange interpolation at 0 with one batched
modular inversion, so rebuilding the ~100 secrets of a 100-device round costs milliseconds.

Share x-coordinates are ``1..k``: the holder's position (plus one) in the owner's sorted neighbour
list, which both sides and the aggregator derive from the public graph, so x is never taken from the
wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import nacl.utils

from shared.errors import InvalidValue, SecAggError

PRIME = (1 << 256) + 297
#: Bytes of a serialised share value (257 bits round up to 33 bytes).
SHARE_BYTES = 33
SECRET_BYTES = 32


class NotEnoughShares(SecAggError, ValueError):
    """Fewer than ``t`` shares were offered for a reconstruction."""


def _random_field_element() -> int:
    # 48 random bytes mod p: statistical distance from uniform is below 2^-127.
    return int.from_bytes(nacl.utils.random(48), "little") % PRIME


def split(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shares of ``secret`` at x = 1..holders; any ``threshold`` of them reconstruct it.

    Returns one :data:`SHARE_BYTES`-byte share per holder, the i-th being f(i+1) for a random polynomial
    f of degree ``threshold - 1`` with f(0) = secret.
    """
    if len(secret) != SECRET_BYTES:
        raise InvalidValue(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders:
        raise InvalidValue(f"need 1 <= threshold <= holders, got t={threshold}, k={holders}")
    coefficients = [int.from_bytes(secret, "little")] + [
        _random_field_element() for _ in range(threshold - 1)
    ]
    coefficients.reverse()  # Horner: highest degree first
    shares = []
    for x in range(1, holders + 1):
        y = 0
        for c in coefficients:
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "little"))
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_i`` with f(0) = sum l_i f(x_i) (the cached rows of :func:`_lagrange_rows`)."""
    if len(set(xs)) != len(xs) or any(x <= 0 or x >= PRIME for x in xs):
        raise SecAggError(f"share x-coordinates must be distinct and in 1..p-1, got {list(xs)}")
    return list(_lagrange_rows(tuple(xs), (0,))[0])


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod PRIME of all ``values`` (non-zero) with one pow() (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    inverses = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        inverses[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return inverses


@lru_cache(maxsize=256)
def _lagrange_rows(basis: tuple[int, ...], targets: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Row ``r`` holds the coefficients with f(targets[r]) = sum_i row[i] * f(basis[i]) for every f of
    degree < len(basis).

    Cached: in a round the same holders reveal for most dealers, so the rows are computed once per
    round and each secret then costs one small matrix-vector product.
    """
    t = len(basis)
    weights = _batch_inverse(
        [_product(xi - xj for j, xj in enumerate(basis) if j != i) for i, xi in enumerate(basis)]
    )
    rows = []
    for z in targets:
        factors = [(z - xj) % PRIME for xj in basis]
        prefix, suffix = [1] * (t + 1), [1] * (t + 1)
        for i in range(t):
            prefix[i + 1] = prefix[i] * factors[i] % PRIME
            suffix[t - 1 - i] = suffix[t - i] * factors[t - 1 - i] % PRIME
        rows.append(tuple(w * prefix[i] % PRIME * suffix[i + 1] % PRIME for i, w in enumerate(weights)))
    return tuple(rows)


def _product(values: Iterable[int]) -> int:
    result = 1
    for v in values:
        result = result * v % PRIME
    return result


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret behind ``shares`` ({x: share}), using the ``threshold`` smallest x.

    Raises :class:`NotEnoughShares` for fewer than ``threshold`` shares and :class:`SecAggError` when the
    interpolated value cannot be a 32-byte secret. A corrupted share usually still yields *some* 32-byte
    value: callers check the result against the owner's commitment.
    """
    if threshold < 1:
        raise InvalidValue(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise NotEnoughShares(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = sorted(shares)[:threshold]
    ys = []
    for x in xs:
        share = shares[x]
        if len(share) != SHARE_BYTES:
            raise SecAggError(f"share for x={x} has {len(share)} bytes, expected {SHARE_BYTES}")
        y = int.from_bytes(share, "little")
        if y >= PRIME:
            raise SecAggError(f"share for x={x} is not a field element")
        ys.append(y)
    secret = sum(c * y for c, y in zip(lagrange_at_zero(xs), ys)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise SecAggError("shares are inconsistent: the reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "little")


class UndecodableShares(SecAggError):
    """The offered shares do not lie on one polynomial of degree < t, even allowing for the most
    corrupt shares that ``m`` shares can correct (``(m - t) // 2``)."""


def _field_shares(shares: Mapping[int, bytes]) -> tuple[list[int], list[int | None]]:
    xs = sorted(shares)
    ys: list[int | None] = []
    for x in xs:
        share = shares[x]
        y = int.from_bytes(share, "little") if len(share) == SHARE_BYTES else PRIME
        ys.append(y if y < PRIME else None)  # a malformed share is simply a wrong one
    return xs, ys


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    y = 0
    for c in reversed(coefficients):  # lowest degree first
        y = (y * x + c) % PRIME
    return y


def _interpolate(points: Sequence[tuple[int, int]]) -> list[int]:
    """Coefficients (lowest degree first) of the unique polynomial of degree < len(points) through them.

    O(n^2): the master polynomial prod_j (x - x_j) is built once and each Lagrange basis polynomial is it
    divided by (x - x_i) (synthetic division), instead of a product of n - 1 factors per point (O(n^3),
    40 ms per secret at t = 75, which was most of the aggregator's unmasking time at cohort 300).
    """
    n = len(points)
    master = [1]  # prod_j (x - x_j), lowest degree first
    for xj, _ in points:
        master = [(a - xj * b) % PRIME for a, b in zip([0, *master], [*master, 0])]
    result = [0] * n
    for xi, yi in points:
        basis = [0] * n  # master / (x - xi): exact, since xi is a root
        carry = 0
        for k in range(n, 0, -1):
            carry = (master[k] + xi * carry) % PRIME
            basis[k - 1] = carry
        denominator = _evaluate(basis, xi)  # prod_{j != i} (xi - xj)
        scale = yi * pow(denominator, -1, PRIME) % PRIME
        for d, c in enumerate(basis):
            result[d] = (result[d] + c * scale) % PRIME
    return result


def _solve(matrix: list[list[int]], rhs: list[int]) -> list[int] | None:
    """One solution of ``matrix @ v = rhs`` over GF(p) (free variables set to 0), or None."""
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    a = [[*row, b] for row, b in zip(matrix, rhs)]
    pivots: list[int] = []
    r = 0
    for c in range(cols):
        pivot = next((i for i in range(r, rows) if a[i][c]), None)
        if pivot is None:
            continue
        a[r], a[pivot] = a[pivot], a[r]
        inverse = pow(a[r][c], -1, PRIME)
        a[r] = [v * inverse % PRIME for v in a[r]]
        for i in range(rows):
            if i != r and a[i][c]:
                factor = a[i][c]
                a[i] = [(v - factor * w) % PRIME for v, w in zip(a[i], a[r])]
        pivots.append(c)
        r += 1
        if r == rows:
            break
    if any(a[i][cols] for i in range(r, rows)):
        return None
    solution = [0] * cols
    for i, c in enumerate(pivots):
        solution[c] = a[i][cols]
    return solution


def _divide(numerator: list[int], denominator: list[int]) -> tuple[list[int], bool]:
    """Quotient of two polynomials (lowest degree first; ``denominator`` monic) and whether it is exact."""
    remainder = numerator[:]
    degree = len(denominator) - 1
    quotient = [0] * max(len(numerator) - degree, 1)
    for shift in range(len(numerator) - 1 - degree, -1, -1):
        coefficient = remainder[shift + degree]
        quotient[shift] = coefficient
        if coefficient:
            for i, d in enumerate(denominator):
                remainder[shift + i] = (remainder[shift + i] - coefficient * d) % PRIME
    return quotient, not any(remainder[:degree])


def robust_reconstruct(shares: Mapping[int, bytes], threshold: int) -> tuple[bytes, list[int]]:
    """The secret behind ``shares`` despite corrupt ones, and the x of every share that is wrong.

    Reed-Solomon decoding (Berlekamp-Welch): ``m`` shares of a degree ``t - 1`` polynomial correct up to
    ``(m - t) // 2`` arbitrary errors, so while enough holders reveal honestly the secret comes back
    *and* every corrupt share is identified (its value is off the decoded polynomial), which is what lets
    the aggregator blame the actual revealer instead of the dealer. The common, error-free case costs one
    interpolation and ``m - t`` evaluations. Raises :class:`UndecodableShares` when no polynomial of
    degree < t agrees with at least ``m - (m - t) // 2`` shares (the dealer's shares are inconsistent, or
    too many holders lied), and :class:`NotEnoughShares` below ``t`` shares.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise NotEnoughShares(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs, ys = _field_shares(shares)
    if any(x <= 0 or x >= PRIME for x in xs):
        raise SecAggError(f"share x-coordinates must be in 1..p-1, got {xs}")
    m, t = len(xs), threshold
    good = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(good) >= t:  # fast path: the first t well-formed shares explain all of them
        basis = tuple(x for x, _ in good[:t])
        others = [(x, y) for x, y in zip(xs, ys) if x not in basis]
        rows = _lagrange_rows(basis, (0, *(x for x, _ in others)))
        values = [sum(c * y for c, (_, y) in zip(row, good[:t])) % PRIME for row in rows]
        if all(y is not None and v == y for (_, y), v in zip(others, values[1:])):
            return _secret([values[0]]), []
    errors = (m - t) // 2
    if errors == 0:
        raise UndecodableShares(f"{m} shares at threshold {t} cannot correct a wrong share")
    # Berlekamp-Welch: unknowns E (monic, degree `errors`) and Q (degree < errors + t) with
    # Q(x_i) = y_i E(x_i) at every share; then the polynomial is Q / E.
    matrix, rhs = [], []
    for x, y in zip(xs, ys):
        value = 0 if y is None else y  # a malformed share is any wrong value
        powers = [pow(x, j, PRIME) for j in range(errors + t)]
        matrix.append(powers[: errors + t] + [(-value * powers[j]) % PRIME for j in range(errors)])
        rhs.append(value * pow(x, errors, PRIME) % PRIME)
    solution = _solve(matrix, rhs)
    if solution is None:
        raise UndecodableShares(f"no polynomial of degree < {t} fits {m - errors} of {m} shares")
    q, e = solution[: errors + t], [*solution[errors + t :], 1]
    poly, exact = _divide(q, e)
    wrong = [x for x, y in zip(xs, ys) if y is None or _evaluate(poly, x) != y]
    if not exact or len(wrong) > errors:
        raise UndecodableShares(f"no polynomial of degree < {t} fits {m - errors} of {m} shares")
    return _secret(poly), wrong


def _secret(poly: Sequence[int]) -> bytes:
    secret = poly[0] if poly else 0
    if secret >> (8 * SECRET_BYTES):
        raise UndecodableShares("shares are inconsistent: the decoded value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "little")


def off_polynomial(basis: Sequence[int], shares: Mapping[int, bytes]) -> list[int]:
    """The x of every share not on the polynomial through the shares at the ``basis`` x's (t of them)."""
    xs, ys = _field_shares(shares)
    by_x = dict(zip(xs, ys))
    points = []
    for x in basis:
        y = by_x[x]
        if y is None:
            return list(xs)
        points.append((x, y))
    poly = _interpolate(points)
    return [x for x, y in zip(xs, ys) if y is None or _evaluate(poly, x) != y]
