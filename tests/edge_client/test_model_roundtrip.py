"""FederatedModel maps CNN, LSTM and LoRA-transformer weights to the flat layout bit-exactly, keeps
local-only tensors off the wire, and partitions the layout into blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edge_client.lora import apply_lora
from edge_client.model import FederatedModel, group_blocks, module_block
from shared.errors import CodecError
from simulator.models import digits_mlp
from simulator.workloads.shakespeare import CharLSTM, CharTransformer


def bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def lora_transformer() -> nn.Module:
    torch.manual_seed(0)
    model = CharTransformer()
    apply_lora(model, ["layers.*.attn.q", "layers.*.attn.v"], rank=4)
    return model


BUILDERS = {"cnn": bn_cnn, "lstm": CharLSTM, "lora-transformer": lora_transformer}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_flat_roundtrip_is_bit_exact(kind: str) -> None:
    model = FederatedModel(BUILDERS[kind]())
    params = dict(model.module.named_parameters())
    flat = np.random.default_rng(1).standard_normal(model.dim).astype(np.float32)
    model.set_flat(flat)
    assert model.get_flat().tobytes() == flat.tobytes()
    for spec, piece in model.layout.split(flat).items():
        assert params[spec].detach().numpy().tobytes() == piece.tobytes()
    # and back: a second model loaded from the first one's flat vector has the same federated weights
    other = FederatedModel(BUILDERS[kind]())
    other.set_flat(model.get_flat())
    other_params = dict(other.module.named_parameters())
    for name in model.federated_names:
        assert torch.equal(params[name], other_params[name])


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_local_tensors_never_in_flat_and_untouched_by_set_flat(kind: str) -> None:
    model = FederatedModel(BUILDERS[kind]())
    model.module.train()
    with torch.no_grad():  # make BN running stats non-default, as on a device that has trained
        for sub in model.module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.uniform_()
                sub.weight.uniform_()
    before = snapshot(model.module)
    model.set_flat(np.full(model.dim, 3.0, dtype=np.float32))
    after = snapshot(model.module)
    assert set(model.local_names).isdisjoint(model.federated_names)
    assert set(model.local_names) | set(model.federated_names) == set(before)
    for name in model.local_names:
        assert torch.equal(before[name], after[name]), name
    for name in model.federated_names:
        assert torch.all(after[name] == 3.0)


def test_fedbn_keeps_batch_norm_local_by_default_and_federates_it_on_request() -> None:
    local = FederatedModel(bn_cnn())
    assert {"1.weight", "1.bias", "1.running_mean", "1.running_var", "4.weight"} <= set(local.local_names)
    assert not any(name.startswith(("1.", "4.")) for name in local.federated_names)
    shared = FederatedModel(bn_cnn(), local_bn=False)
    assert {"1.weight", "1.bias", "4.weight", "4.bias"} <= set(shared.federated_names)
    assert "1.running_mean" in shared.local_names  # buffers stay local either way
    assert shared.dim == local.dim + 4 * 8


def test_local_state_roundtrip() -> None:
    device = FederatedModel(bn_cnn())
    with torch.no_grad():
        device.module[1].running_mean.fill_(0.5)
    state = device.local_state()
    fresh = FederatedModel(bn_cnn())
    fresh.load_local_state(state)
    assert torch.equal(fresh.module[1].running_mean, torch.full((8,), 0.5))
    with pytest.raises(CodecError):
        fresh.load_local_state({"0.weight": torch.zeros(8, 1, 3, 3)})


def test_default_layout_unchanged_for_plain_models() -> None:
    module = digits_mlp()
    model = FederatedModel(module)
    assert model.layout.names == [name for name, _ in module.named_parameters()]
    assert [b.name for b in model.blocks] == ["0", "2"]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_blocks_partition_the_layout(kind: str) -> None:
    model = FederatedModel(BUILDERS[kind]())
    covered = np.zeros(model.dim, dtype=int)
    offset = 0
    for block in model.blocks:
        assert block.offset == offset
        covered[block.slice] += 1
        offset += block.size
        assert block.size == sum(model.layout.sizes[model.layout.names.index(n)] for n in block.param_names)
    assert offset == model.dim and np.all(covered == 1)
    assert sorted(n for b in model.blocks for n in b.param_names) == sorted(model.layout.names)
    # the aggregator can derive the same blocks from the layout alone (no torch, no class)
    assert group_blocks(model.layout.names, model.layout.sizes) == model.blocks


def test_lstm_blocks_are_layers() -> None:
    model = FederatedModel(CharLSTM())
    assert [b.name for b in model.blocks] == ["embed", "lstm", "head"]
    assert model.blocks[1].param_names == (
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
    )


@settings(max_examples=25, deadline=None)
@given(st.sets(st.sampled_from(["embed", "lstm", "head"]), min_size=1))
def test_subset_get_set_touches_only_those_blocks(chosen: set[str]) -> None:
    model = FederatedModel(CharLSTM())
    full = model.get_flat()
    part = model.get_flat(chosen)
    expected = np.concatenate([full[b.slice] for b in model.blocks if b.name in chosen])
    assert part.tobytes() == expected.tobytes()
    model.set_flat(part + 1.0, blocks=chosen)
    after = model.get_flat()
    for block in model.blocks:
        if block.name in chosen:
            np.testing.assert_array_equal(after[block.slice], full[block.slice] + 1.0)
        else:
            assert after[block.slice].tobytes() == full[block.slice].tobytes()


def test_custom_grouping_mapping_and_callable() -> None:
    by_prefix = FederatedModel(CharTransformer(), blocks={"layers": "body", "embed": "io", "head": "io"})
    names = [b.name for b in by_prefix.blocks]
    assert names == ["position", "io", "body", "norm"]  # "io" made contiguous: embed + head together
    io = by_prefix.blocks[1]
    assert io.param_names == ("embed.weight", "head.weight", "head.bias")
    flat = np.arange(by_prefix.dim, dtype=np.float32)
    by_prefix.set_flat(flat)
    assert by_prefix.get_flat().tobytes() == flat.tobytes()
    per_layer = FederatedModel(CharTransformer(), blocks=lambda n: ".".join(n.split(".")[:2]))
    assert "layers.0" in [b.name for b in per_layer.blocks]
    with pytest.raises(CodecError):
        per_layer.get_flat(["no-such-block"])
    with pytest.raises(CodecError):
        group_blocks(["a.w", "b.w", "a.b"], [1, 1, 1])
    assert module_block("position") == "position"
