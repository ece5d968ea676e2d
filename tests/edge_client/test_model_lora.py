"""LoRA: the wrapped model starts identical, trains and federates only its adapters, and those are a
small fraction of full fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_client.lora import LoRALinear, apply_lora, merge_lora, unmerge_lora
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.errors import ConfigError
from simulator.workloads.shakespeare import LORA_RANK, LORA_TARGETS, VOCAB_SIZE, CharTransformer


def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    base = CharTransformer()
    wrapped = CharTransformer()
    wrapped.load_state_dict(base.state_dict())
    apply_lora(wrapped, LORA_TARGETS, rank=LORA_RANK)
    return base, wrapped


def tokens(n: int = 4) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (n, 80), generator=torch.Generator().manual_seed(3))


def test_wrapped_model_starts_identical_and_keeps_state_dict_names() -> None:
    base, wrapped = pair()
    with torch.no_grad():
        assert torch.equal(base(tokens()), wrapped(tokens()))
    base_names = set(base.state_dict())
    assert base_names <= set(wrapped.state_dict())  # pretrained checkpoints load unchanged
    extra = set(wrapped.state_dict()) - base_names
    assert extra and all(name.endswith(("lora_A", "lora_B")) for name in extra)


def test_only_adapters_are_federated_and_under_five_percent() -> None:
    base, wrapped = pair()
    full = FederatedModel(base)
    lora = FederatedModel(wrapped)
    assert all(name.endswith(("lora_A", "lora_B")) for name in lora.federated_names)
    assert len(lora.federated_names) == 2 * 4 * 2  # A and B, four projections, two layers
    assert lora.dim <= 0.05 * full.dim, (lora.dim, full.dim)
    assert [b.name for b in lora.blocks][:2] == ["layers.0.attn.q", "layers.0.attn.k"]


def test_training_moves_adapters_only_and_frozen_base_stays_bit_identical() -> None:
    _, wrapped = pair()
    model = FederatedModel(wrapped)
    frozen = {
        name: t.clone() for name, t in wrapped.state_dict().items() if name not in model.federated_names
    }
    x = tokens(16)
    y = torch.roll(x, -1, dims=1)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), target.reshape(-1))

    result = LocalTrainer(model, x, y, TrainConfig(steps=3, batch_size=8, lr=0.5), loss_fn).train(
        model.get_flat()
    )
    assert result.delta.shape == (model.dim,) and np.abs(result.delta).sum() > 0
    model.set_flat(np.zeros(model.dim, dtype=np.float32))
    for name, tensor in wrapped.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name


def test_merge_unmerge() -> None:
    _, wrapped = pair()
    with torch.no_grad():
        for layer in wrapped.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.normal_()
        adapted = wrapped(tokens())
        weight = wrapped.layers[0].attn.q.weight.clone()
        merge_lora(wrapped)
        torch.testing.assert_close(wrapped(tokens()), adapted, rtol=1e-4, atol=1e-4)
        merge_lora(wrapped)  # idempotent
        unmerge_lora(wrapped)
        torch.testing.assert_close(wrapped.layers[0].attn.q.weight, weight, rtol=0, atol=1e-5)
        torch.testing.assert_close(wrapped(tokens()), adapted, rtol=1e-4, atol=1e-4)


def test_apply_lora_rejects_patterns_that_match_nothing() -> None:
    with pytest.raises(ConfigError):
        apply_lora(CharTransformer(), ["nothing.*"])
    with pytest.raises(ConfigError):
        LoRALinear(4, 4, rank=0)
