"""ECG encoders: ``(B, 12, T)`` signal -> ``(B, D)`` L2-normalised embedding in text space.

* ``seed-cnn``: the seed notebook's 4-block CNN (conv 12->32->64->128->256, k=3, BN, ReLU,
  max-pool, FC), with its two bugs fixed: each BatchNorm has the width of the conv before it,
  and the FC input size is computed from the input length instead of hard-coded.
* ``resnet1d`` (default): a 1-d ResNet in the xresnet1d style of the PTB-XL benchmark
  (Strodthoff et al. 2021): a three-conv stem, residual blocks with kernel 5, concat
  average+max pooling. Depth and width are options.

Every encoder ends in a projection head to the text dimension; ``forward`` returns unit vectors
and ``encode`` embeds a whole numpy array. ``ZeroShotModel`` is what ``fit`` trains and every
checkpoint holds: the encoder, the class vectors, and the logit scale and bias.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast

class SeedCNN(nn.Module):
    def __init__(self, n_samples, widths=(32, 64, 128, 256), kernel=3, feature_dim=256):
        super().__init__()
        blocks, c_in, t = [], 12, n_samples
        for c_out in widths:
            blocks += [nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
                       nn.BatchNorm1d(c_out), nn.ReLU(inplace=True), nn.MaxPool1d(2)]
            c_in, t = c_out, t // 2
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in * t, feature_dim)
        self.out_dim = feature_dim

    def forward(self, x, length=None):         # (B, 12, T) -> (B, feature_dim)
        # The seed's flatten + FC sees every time step; padding is zeros at its input, and a
        # position-specific layer has nothing to pool, so ``length`` is not used here.
        return F.relu(self.fc(self.features(x).flatten(1)))


class BasicBlock1d(nn.Module):
    def __init__(self, c_in, c_out, stride, kernel=5):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        nn.init.zeros_(self.bn2.weight)        # each block starts as the identity (xresnet)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.AvgPool1d(stride, ceil_mode=True) if stride > 1 else nn.Identity(),
                nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class ResNet1d(nn.Module):
    def __init__(self, widths=(64, 128, 192, 256), depth=(1, 1, 1, 1), stem=32, kernel=5):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(12, stem, 7, 2, 3, bias=False), nn.BatchNorm1d(stem), nn.ReLU(inplace=True),
            nn.Conv1d(stem, stem, 5, 1, 2, bias=False), nn.BatchNorm1d(stem), nn.ReLU(inplace=True),
            nn.Conv1d(stem, widths[0], 5, 1, 2, bias=False), nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True), nn.MaxPool1d(3, 2, 1))
        layers, c_in = [], widths[0]
        for i, (c_out, n) in enumerate(zip(widths, depth)):
            for j in range(n):
                layers.append(BasicBlock1d(c_in, c_out, 2 if (j == 0 and i > 0) else 1, kernel))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = 2 * c_in

    def forward(self, x, length=None):         # (B, 12, T) -> (B, 2 * widths[-1])
        h = self.layers(self.stem(x))          # (B, C, T')
        # max(...).values, not amax: under torch.compile with bf16 autocast, amax's gradient
        # after batch norm is NaN from the first step (pytorch/pytorch#186799; torch 2.11 CUDA
        # and 2.13 CPU), and the compiled fit diverged.
        if length is None:
            return torch.cat([h.mean(-1), h.max(-1).values], dim=1)
        # Pool only the feature steps that cover valid samples: a short record's zero padding
        # must not dilute its mean or stand in for its maximum.
        steps = h.shape[-1]
        valid = torch.ceil(length.to(h.device, torch.float32) * steps / x.shape[-1])
        valid = valid.clamp(1, steps)                                      # (B,)
        mask = torch.arange(steps, device=h.device)[None, :] < valid[:, None]  # (B, T')
        mean = (h * mask[:, None, :]).sum(-1) / valid[:, None].to(h.dtype)
        peak = h.masked_fill(~mask[:, None, :], float("-inf")).max(-1).values
        return torch.cat([mean, peak], dim=1)


@dataclass(frozen=True)
class Arch:
    """An encoder backbone by name: how it is built from an ``EncoderConfig`` and channel
    widths, and its widths at ``width`` 1 (the config's multiplier scales them)."""
    build: Callable
    widths: tuple


ARCHS = {
    "resnet1d": Arch(lambda cfg, widths: ResNet1d(widths), (64, 128, 192, 256)),
    "seed-cnn": Arch(lambda cfg, widths: SeedCNN(cfg.n_samples, widths), (32, 64, 128, 256)),
}


@dataclass(frozen=True)
class EncoderConfig:
    """What an encoder is built from; stored in every checkpoint and compared on resume."""
    arch: str = "resnet1d"
    n_samples: int = 1000
    text_dim: int = 384
    proj_hidden: int = 512
    input_scale: float = 1.0      # 1/mV: millivolt and z-scored shards both arrive near unit
    width: float = 1.0            # channel-width multiplier of the backbone
    members: int = 1              # fits whose encoders are averaged (`ecgshard ensemble`)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {sorted(ARCHS)}")
        if self.members < 1:
            raise ValueError(f"an encoder has at least one member, not {self.members}")

    @classmethod
    def from_dict(cls, stored):
        """A checkpoint's config: fields added since take their defaults, fields dropped since
        (``fs``: the rate lives in the run's signal path) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})


class Encoder(nn.Module):
    """What every encoder shares: ``forward`` gives unit vectors in text space, ``encode`` a
    whole numpy array of them."""
    config: EncoderConfig

    def encode(self, signal, length=None, batch_size=512, device="cpu", amp=True,
               desc="embed"):
        """Embeddings (N, D) float32 numpy of a (N, 12, T) numpy array whose records hold
        ``length`` (N,) valid samples (all T when None), in batches, without gradients; a
        progress bar on a terminal (``desc``)."""
        from tqdm.auto import tqdm

        self.eval()
        out = []
        with torch.inference_mode():
            for i in tqdm(range(0, len(signal), batch_size), desc=desc, unit="batch",
                          disable=None, leave=False):
                x = torch.from_numpy(signal[i:i + batch_size]).to(device, non_blocking=True)
                n = None if length is None else torch.from_numpy(
                    np.asarray(length[i:i + batch_size])).to(device)
                with autocast(device, amp):
                    out.append(self(x.float(), n).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.config.text_dim), np.float32)
        return np.concatenate(out)


class ECGEncoder(Encoder):
    """Backbone + projection head; outputs unit vectors comparable with text embeddings."""
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        arch = ARCHS[config.arch]
        self.backbone = arch.build(config, tuple(max(8, round(w * config.width))
                                                 for w in arch.widths))
        self.head = nn.Sequential(nn.Linear(self.backbone.out_dim, config.proj_hidden),
                                  nn.ReLU(inplace=True),
                                  nn.Linear(config.proj_hidden, config.text_dim))

    def forward(self, x, length=None):         # (B, 12, T), (B,) -> (B, D), unit norm
        z = self.head(self.backbone(x * self.config.input_scale, length))
        return F.normalize(z.float(), dim=-1)


class EncoderEnsemble(Encoder):
    """Several fits' encoders as one: the mean of their unit vectors, renormalised. Fits of
    other seeds differ by as much as most settings do (docs/findings.md); their mean keeps what
    they share."""
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        one = replace(config, members=1)
        self.members = nn.ModuleList(ECGEncoder(one) for _ in range(config.members))

    def forward(self, x, length=None):
        return F.normalize(torch.stack([m(x, length) for m in self.members]).mean(0), dim=-1)


def build_encoder(config: EncoderConfig) -> Encoder:
    return ECGEncoder(config) if config.members == 1 else EncoderEnsemble(config)


class ZeroShotModel(nn.Module):
    """The trained model: the encoder, the class vectors it is compared with (the frozen text
    embeddings, or learned ones for the supervised reference) and the logit scale and bias the
    losses use. Losses hold no parameters; the trainer optimises ``param_groups``."""
    def __init__(self, config: EncoderConfig, class_emb, learn_class_emb=False,
                 init_scale=10.0, init_bias=-5.0, max_scale=100.0):
        super().__init__()
        self.encoder = build_encoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        # The bias starts negative because most (record, class) pairs are negatives.
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.max_log_scale = math.log(max_scale)
        class_emb = torch.as_tensor(class_emb, dtype=torch.float32)
        if learn_class_emb:
            # Initialised at the text embeddings, then free: nothing ties a class to its text.
            self.learned_class_emb = nn.Parameter(class_emb.clone())
        else:
            self.learned_class_emb = None
            self.register_buffer("text_class_emb", class_emb, persistent=False)

    def class_emb(self):                       # (C, D), unit rows
        if self.learned_class_emb is not None:
            return F.normalize(self.learned_class_emb, dim=-1)
        return self.text_class_emb

    def scale(self):
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, x, length=None):
        """What a loss takes: ``(ecg_emb (B, D), class_emb (C, D), scale, bias)``. Training goes
        through here, so data-parallel wrapping sees every parameter."""
        return self.encoder(x, length), self.class_emb(), self.scale(), self.logit_bias

    def param_groups(self, weight_decay):
        """Weight decay on the weights of ndim >= 2 (convolutions, linear layers, learned class
        vectors) only, as open_clip does: decaying batch-norm scales and biases shrinks
        activations rather than model capacity, and decaying the logit scale and bias would
        pull the temperature and the calibration towards zero."""
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    @classmethod
    def from_checkpoint(cls, ck):
        model = cls(EncoderConfig.from_dict(ck["model_config"]), ck["text_emb_train"],
                    learn_class_emb=ck.get("learned_class_emb") is not None)
        model.load_state_dict(ck["model"])
        return model
