"""Architecture detection picks the optimizer defaults the docs promise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_client.architectures import (
    DEFAULTS,
    architecture_defaults,
    default_train_config,
    detect_architecture,
)
from simulator.models import digits_mlp
from simulator.workloads.digits import digits_cnn
from simulator.workloads.shakespeare import CharLSTM, CharTransformer


@pytest.mark.parametrize(
    ("module", "family"),
    [
        (digits_mlp(), "mlp"),
        (digits_cnn(), "cnn"),
        (CharLSTM(), "rnn"),
        (nn.Sequential(nn.GRU(4, 4)), "rnn"),
        (CharTransformer(), "transformer"),
        (nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, batch_first=True), 1), "transformer"),
    ],
)
def test_detects_family(module: nn.Module, family: str) -> None:
    assert detect_architecture(module) == family


def test_defaults_follow_the_family() -> None:
    assert default_train_config(digits_cnn()).momentum == 0.9
    assert default_train_config(CharLSTM()).grad_clip == 1.0
    assert default_train_config(CharLSTM(), epochs=3).epochs == 3
    assert default_train_config(digits_mlp(), architecture="rnn").grad_clip == 1.0
    transformer = architecture_defaults(CharTransformer())
    assert isinstance(transformer.make_optimizer(CharTransformer().parameters()), torch.optim.AdamW)
    assert isinstance(DEFAULTS["cnn"].make_optimizer(digits_cnn().parameters()), torch.optim.SGD)
