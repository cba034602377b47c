"""ECG encoders: ``(B, 12, T)`` signal -> ``(B, D)`` L2-normalised embedding in text space.

* ``seed-cnn``: the seed notebook's 4-block CNN (conv 12->32->64->128->256, k=3, BN, ReLU,
  max-pool, FC), with its two bugs fixed: each BatchNorm has the width of the conv before it,
  and the FC input size is computed from the input length instead of hard-coded.
* ``resnet1d`` (default): a 1-d ResNet in the xresnet1d style of the PTB-XL benchmark
  (Strodthoff et al. 2021): a three-conv stem, residual blocks with kernel 5, concat
  average+max pooling. Depth and width are options.

Every encoder ends in a projection head to the text dimension; ``forward`` returns unit vectors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("resnet1d", "seed-cnn")


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
        if length is None:
            return torch.cat([h.mean(-1), h.amax(-1)], dim=1)
        # Pool only the feature steps that cover valid samples: a short record's zero padding
        # must not dilute its mean or stand in for its maximum.
        steps = h.shape[-1]
        valid = torch.ceil(length.to(h.device, torch.float32) * steps / x.shape[-1])
        valid = valid.clamp(1, steps)                                      # (B,)
        mask = torch.arange(steps, device=h.device)[None, :] < valid[:, None]  # (B, T')
        mean = (h * mask[:, None, :]).sum(-1) / valid[:, None].to(h.dtype)
        peak = h.masked_fill(~mask[:, None, :], float("-inf")).amax(-1)
        return torch.cat([mean, peak], dim=1)


class ECGEncoder(nn.Module):
    """Backbone + projection head; outputs unit vectors comparable with text embeddings.

    The input is scaled by ``input_scale`` (1/mV) so that millivolt shards and z-scored shards
    both arrive near unit variance.
    """

    def __init__(self, arch, n_samples, text_dim, proj_hidden=512, input_scale=1.0):
        super().__init__()
        if arch == "seed-cnn":
            self.backbone = SeedCNN(n_samples)
        elif arch == "resnet1d":
            self.backbone = ResNet1d()
        else:
            raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHS}")
        self.head = nn.Sequential(nn.Linear(self.backbone.out_dim, proj_hidden),
                                  nn.ReLU(inplace=True), nn.Linear(proj_hidden, text_dim))
        self.input_scale = input_scale

    def forward(self, x, length=None):         # (B, 12, T), (B,) -> (B, D), unit norm
        z = self.head(self.backbone(x * self.input_scale, length))
        return F.normalize(z.float(), dim=-1)


def build_model(config):
    """An encoder from the dict stored in checkpoints (``arch``, ``n_samples``, ``text_dim``...)."""
    return ECGEncoder(config["arch"], config["n_samples"], config["text_dim"],
                      config.get("proj_hidden", 512), config.get("input_scale", 1.0))
