"""fedmq's wire format: msgpack maps with a schema version and a message type.

``base`` holds the generic, defensive codec; each sibling module declares the message dataclasses of
one concern (``messages`` for rounds and models, ``secagg`` for secure aggregation). Importing this
package registers all of them.
"""

from shared.wire import (
    messages,  # noqa: F401  (registers message types)
    roster,  # noqa: F401  (registers the compact roster's message types)
    secagg,  # noqa: F401  (registers secure-aggregation message types)
    seeds,  # noqa: F401  (registers the pair-seed step of secure aggregation)
)
from shared.wire.base import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Message,
    decode,
    encode,
    message,
    registered_types,
)
from shared.wire.messages import *  # noqa: F403

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "Message",
    "decode",
    "encode",
    "message",
    "registered_types",
]
