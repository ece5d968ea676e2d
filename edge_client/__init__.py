"""The device side of fedmq: local training on any ``torch.nn.Module`` and the MQTT client."""

from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig, TrainResult

__all__ = ["EdgeClient", "EdgeConfig", "FederatedModel", "LocalTrainer", "TrainConfig", "TrainResult"]
