"""Secure aggregation (SecAgg+: Bonawitz et al. CCS 2017, Bell et al. CCS 2020) on PyNaCl and numpy.

Pure protocol core, no MQTT: :class:`SecAggClient` is one device's state machine and
:class:`SecAggServer` one round on the aggregator; they exchange the dataclasses of
:mod:`shared.wire.secagg`. Split by concern: ``keys`` (identities, key agreement), ``prg`` (mask
expansion), ``shamir`` (secret sharing), ``graph`` (neighbours), ``params`` (k and t), ``bundles``
(encrypted shares), ``attribution`` (who broke which rule), ``exclusion``/``seeds``/``proofs`` (a dealer
nobody can rebuild is excluded within the round). The threat model is in ``docs/security.md``.
"""

from shared.secagg.client import SecAggClient
from shared.secagg.keys import generate_identity
from shared.secagg.params import SecAggParams, choose_params
from shared.secagg.server import RoundAbandoned, SecAggServer, unpack_raw
from shared.secagg.shamir import NotEnoughShares

__all__ = [
    "NotEnoughShares",
    "RoundAbandoned",
    "SecAggClient",
    "SecAggParams",
    "SecAggServer",
    "choose_params",
    "generate_identity",
    "unpack_raw",
]
