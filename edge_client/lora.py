"""LoRA adapters (Hu et al., ICLR 2022) so that devices fine-tune and federate a few thousand numbers
instead of a whole model.

``apply_lora`` replaces selected ``nn.Linear`` layers by :class:`LoRALinear` in place and freezes every
other parameter of the model. The output of an adapted layer is ``W x + b + (alpha / r) * B A x`` with
``A`` (r x in) random and ``B`` (out x r) zero, so the wrapped model starts out computing exactly what
the pretrained one did. Because :class:`~edge_client.model.FederatedModel` federates only trained
parameters, a LoRA-wrapped model's flat layout is the adapters and nothing else: the frozen base weights
must be identical on every device (ship them with the app, or load the same checkpoint), and the
aggregator never sees them.

:class:`LoRALinear` subclasses ``nn.Linear`` and keeps the base ``weight``/``bias`` under their original
names, so a pretrained ``state_dict`` loads into the wrapped model unchanged (with ``strict=False`` for
the missing adapter entries).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from shared.errors import ConfigError

#: Default targets: attention projections as commonly named (``attn.q`` ... ``attn.o``, ``*_proj``).
DEFAULT_TARGETS = ("*.q", "*.k", "*.v", "*.o", "*.q_proj", "*.k_proj", "*.v_proj", "*.out_proj")


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / rank) * B @ A``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rank: int = 4, alpha: float = 8.0
    ) -> None:
        if rank < 1:
            raise ConfigError("rank", "must be >= 1")
        super().__init__(in_features, out_features, bias=bias)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.merged = False
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        # Same init as the LoRA paper's reference code: A like a Linear weight, B zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_linear(cls, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> LoRALinear:
        """Wrap ``base``, sharing (not copying) its weight and bias tensors."""
        wrapped = cls(base.in_features, base.out_features, bias=base.bias is not None, rank=rank, alpha=alpha)
        wrapped.to(device=base.weight.device, dtype=base.weight.dtype)
        wrapped.weight = base.weight
        wrapped.bias = base.bias
        wrapped.weight.requires_grad_(False)
        if wrapped.bias is not None:
            wrapped.bias.requires_grad_(False)
        return wrapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight for inference without the extra matmuls.

        Merging then unmerging is exact only up to float rounding; merge for serving, not mid-training.
        """
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def apply_lora(
    module: nn.Module,
    targets: Sequence[str] = DEFAULT_TARGETS,
    rank: int = 4,
    alpha: float = 8.0,
) -> list[str]:
    """Replace the ``nn.Linear`` layers whose module name matches one of ``targets`` (shell-style
    patterns, e.g. ``"layers.*.attn.q"`` or ``"*v"``) with :class:`LoRALinear`, and freeze every
    other parameter. Returns the names of the wrapped layers; raises if none matched, because a model
    with nothing to train would federate nothing.
    """
    chosen = [
        name
        for name, sub in module.named_modules()
        if type(sub) is nn.Linear and any(fnmatch.fnmatchcase(name, pattern) for pattern in targets)
    ]
    if not chosen:
        raise ConfigError("targets", f"no nn.Linear layer matches {list(targets)}")
    for param in module.parameters():
        param.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear.from_linear(getattr(parent, child), rank=rank, alpha=alpha))
    return chosen


def lora_layers(module: nn.Module) -> list[LoRALinear]:
    return [sub for sub in module.modules() if isinstance(sub, LoRALinear)]


def merge_lora(module: nn.Module) -> None:
    """Merge every adapter of ``module`` into its base weight (see :meth:`LoRALinear.merge`)."""
    for layer in lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        layer.unmerge()
