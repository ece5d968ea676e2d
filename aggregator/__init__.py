"""The server side of fedmq: the round engine, its durable store and the server optimisers (no torch)."""

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.optimizer import ServerOptimizerConfig

__all__ = ["Aggregator", "AggregatorConfig", "ServerOptimizerConfig"]
