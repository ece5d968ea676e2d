"""Bounded influence of one device on a round: its weight, and what the aggregate may look like.

Under secure aggregation the aggregator never sees one device's update or weight, only their sums, so a
device could (a) claim the largest weight and (b) send an update far beyond the clip norm. Two rules
bound what that buys:

* **Weight floor.** An honest device's weight is ``min(max(examples / cap, WEIGHT_FLOOR), 1)`` (0 with
  no examples). The codec already refuses a summed weight above one per contributor, so a liar can at
  most claim 1, which is at most ``1 / WEIGHT_FLOOR`` (4x) an honest device's weight, and 1x that of a
  device at the cap. (Before, a device with 130 examples under a cap of 1,000 had weight 0.13, and a
  liar claiming 1.0 took 44% of a ten-device mean.) The price: a device with fewer than
  ``WEIGHT_FLOOR * cap`` examples counts as if it had that many.
* **Aggregate bound.** ``sum_i w_i clip(delta_i) / sum_i w_i`` is a convex combination of vectors of
  norm at most ``C``, so its norm is at most ``C`` (divided by the subsampling rate, which rescales
  kept coordinates), plus the quantisation error (under one integer unit per contributor and
  coordinate) and, with distributed DP, the noise (bounded here at 2 standard deviations of its norm
  with a 4-sigma margin). :func:`check_aggregate` refuses anything beyond: the round is not applied,
  and the log says so. It cannot say *who*: under secure aggregation nobody sees single inputs. What a
  device can still do within the bound (poisoning within the clip) is in docs/security.md.
"""

from __future__ import annotations

import math

import numpy as np

from shared.errors import CodecError

#: Smallest weight an honest device with at least one example gets (as a fraction of the cap's weight).
WEIGHT_FLOOR = 0.25


class AggregateOutOfBounds(CodecError):
    """The decoded aggregate is larger than any set of clipped inputs could produce."""


def device_weight(num_examples: int, weight_cap: int, floor: float = WEIGHT_FLOOR) -> float:
    """FedAvg weight with a floor and a cap: a liar gains at most ``1 / floor`` over an honest device."""
    if num_examples <= 0:
        return 0.0
    return min(max(num_examples / weight_cap, floor), 1.0)


def aggregate_bound(
    *,
    clip_norm: float,
    total_weight: float,
    contributors: int,
    scale: float,
    data_length: int,
    subsample_rate: float = 1.0,
    noise_variance: float = 0.0,
) -> float:
    """The largest norm the decoded mean of ``contributors`` clipped, weighted inputs can have.

    ``scale`` is the codec's integer scale, ``data_length`` the number of integer data coordinates and
    ``noise_variance`` the per-coordinate variance (integer units) of the noise in the sum, if any.
    """
    quantisation = contributors * math.sqrt(data_length)  # < 1 unit per contributor and coordinate
    noise = 2.0 * math.sqrt(noise_variance * data_length) + 4.0 * math.sqrt(noise_variance)
    slack = (quantisation + noise) / (scale * total_weight)
    return (clip_norm + slack) / subsample_rate * (1.0 + 1e-6)


def check_aggregate(mean: np.ndarray, bound: float, contributors: int) -> float:
    """Return the mean's norm; raise :class:`AggregateOutOfBounds` when it exceeds ``bound``."""
    norm = float(np.linalg.norm(np.asarray(mean, dtype=np.float64)))
    if not math.isfinite(norm) or norm > bound:
        raise AggregateOutOfBounds(
            f"decoded aggregate of {contributors} contributors has norm {norm:.4g}, more than the "
            f"{bound:.4g} their clipped inputs can produce: a contributor sent an update beyond the clip "
            "norm or a forged weight; not applied"
        )
    return norm
