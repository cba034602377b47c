"""Contrastive losses between ECG embeddings and a fixed matrix of class-text embeddings.

All take ``ecg_emb`` (B, D) and ``text_emb`` (C, D), both L2-normalised, and multi-hot
``labels`` (B, C) over the training classes; each returns a scalar loss and nothing else.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("bce", "clip", "triplet")


class SigmoidLoss(nn.Module):
    """Per-class sigmoid (SigLIP form) on scaled cosine similarities.

    ``logits = exp(logit_scale) * ecg_emb @ text_emb.T + logit_bias`` and every (record, class)
    pair is an independent binary decision, which is what multi-label ECGs are. Scale and bias
    are learned; the bias starts negative because most pairs are negatives.
    """

    def __init__(self, init_scale=10.0, init_bias=-5.0, max_scale=100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.max_log_scale = math.log(max_scale)

    def logits(self, ecg_emb, text_emb):
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * ecg_emb @ text_emb.T + self.logit_bias

    def forward(self, ecg_emb, text_emb, labels):
        logits = self.logits(ecg_emb, text_emb)                 # (B, C)
        signs = 2.0 * labels.float() - 1.0
        return -F.logsigmoid(signs * logits).sum() / ecg_emb.shape[0]


class MultiLabelCLIPLoss(nn.Module):
    """CLIP's InfoNCE made correct for records with several labels.

    ECG -> text: softmax over the C class texts, target spread evenly over the record's labels.
    Text -> ECG: for each class present in the batch, softmax over the B records, target spread
    over its positive records. The plain CLIP loss (``arange`` targets) assumes one positive per
    row, which multi-label records break. Records without a training label carry no ECG -> text
    term (nothing to pull towards); they still serve as negatives in text -> ECG.
    """

    def __init__(self, init_scale=10.0, max_scale=100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.max_log_scale = math.log(max_scale)

    def logits(self, ecg_emb, text_emb):
        return self.logit_scale.clamp(max=self.max_log_scale).exp() * ecg_emb @ text_emb.T

    def forward(self, ecg_emb, text_emb, labels):
        logits = self.logits(ecg_emb, text_emb)                 # (B, C)
        y = labels.float()
        rows, cols = y.sum(1) > 0, y.sum(0) > 0
        # Sums over the rows and columns with a positive, divided by their count (at least 1):
        # a batch without any positive gives 0 (and zero gradients), not the NaN of an empty mean.
        e2t = -(y[rows] / y[rows].sum(1, keepdim=True)
                * F.log_softmax(logits[rows], dim=1)).sum() / rows.sum().clamp(min=1)
        t2e = -(y[:, cols] / y[:, cols].sum(0, keepdim=True)
                * F.log_softmax(logits[:, cols], dim=0)).sum() / cols.sum().clamp(min=1)
        return (e2t + t2e) / 2


class TripletLoss(nn.Module):
    """The seed's triplet loss: anchor ECG, positive = a label text, negative = a non-label text.

    ``mean over (record, positive, negative) of relu(margin - cos(a, p) + cos(a, n))``, over
    every positive/negative pair of each record (the seed sampled one; all pairs is the same
    expectation without the sampling noise, and deterministic).
    """

    def __init__(self, margin=0.2):
        super().__init__()
        self.margin = margin

    def logits(self, ecg_emb, text_emb):
        return ecg_emb @ text_emb.T

    def forward(self, ecg_emb, text_emb, labels):
        sim = ecg_emb @ text_emb.T                              # (B, C)
        y = labels.bool()
        # (B, C_pos, C_neg) hinge over all pairs; masked to real positive/negative pairs.
        hinge = F.relu(self.margin - sim[:, :, None] + sim[:, None, :])
        mask = y[:, :, None] & ~y[:, None, :]
        return (hinge * mask).sum() / mask.sum().clamp(min=1)


def build_loss(name):
    if name == "bce":
        return SigmoidLoss()
    if name == "clip":
        return MultiLabelCLIPLoss()
    if name == "triplet":
        return TripletLoss()
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
