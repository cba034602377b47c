"""Contrastive losses between ECG embeddings and a fixed matrix of class-text embeddings.

Stateless, like open_clip's: each takes ``ecg_emb`` (B, D) and ``class_emb`` (C, D), both
L2-normalised, multi-hot ``labels`` (B, C) over the training classes, and the model's
``logit_scale`` (already exponentiated and clamped) and ``logit_bias``; each returns a scalar
loss and nothing else. The parameters live in ``models.ZeroShotModel``; ``uses_scale`` and
``uses_bias`` say which of the two a loss reads (the trainer freezes the other).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class SigmoidLoss(nn.Module):
    """Per-class sigmoid (SigLIP form) on scaled cosine similarities.

    ``logits = logit_scale * ecg_emb @ class_emb.T + logit_bias`` and every (record, class)
    pair is an independent binary decision, which is what multi-label ECGs are.
    """
    uses_scale, uses_bias = True, True
    calibrated = True           # sigmoid(scale * cosine + bias) is a trained probability

    def forward(self, ecg_emb, class_emb, labels, logit_scale, logit_bias):
        logits = logit_scale * ecg_emb @ class_emb.T + logit_bias        # (B, C)
        signs = 2.0 * labels.float() - 1.0
        return -F.logsigmoid(signs * logits).sum() / ecg_emb.shape[0]


class MultiLabelCLIPLoss(nn.Module):
    """CLIP's InfoNCE made correct for records with several labels.

    ECG -> text: softmax over the C class texts, target spread evenly over the record's labels.
    Text -> ECG: for each class present in the batch, softmax over the B records, target spread
    over its positive records. The plain CLIP loss (``arange`` targets) assumes one positive per
    row, which multi-label records break. Records without a training label carry no ECG -> text
    term (nothing to pull towards); they still serve as negatives in text -> ECG. No bias: a
    softmax is blind to it.
    """
    uses_scale, uses_bias = True, False
    calibrated = False          # softmax over classes: a score, not a per-class probability

    def forward(self, ecg_emb, class_emb, labels, logit_scale, logit_bias=None):
        logits = logit_scale * ecg_emb @ class_emb.T                     # (B, C)
        y = labels.float()
        rows = y.sum(1) > 0
        # Sums over the rows (and columns) with a positive, divided by their count (at least
        # 1): a batch without any positive gives 0 (and zero gradients), not the NaN of an
        # empty mean.
        e2t = -(y[rows] / y[rows].sum(1, keepdim=True)
                * F.log_softmax(logits[rows], dim=1)).sum() / rows.sum().clamp(min=1)
        return (e2t + self.text_to_ecg(logits, y)) / 2

    @staticmethod
    def text_to_ecg(logits, y):
        """For each class with a positive in the batch: softmax over the B records, target
        spread over its positive records."""
        cols = y.sum(0) > 0
        return -(y[:, cols] / y[:, cols].sum(0, keepdim=True)
                 * F.log_softmax(logits[:, cols], dim=0)).sum() / cols.sum().clamp(min=1)


class TextSmoothedCLIPLoss(MultiLabelCLIPLoss):
    """The multi-label CLIP loss with soft ECG -> text targets drawn from the frozen text space.

    A record's target row keeps ``1 - alpha`` on its own labels (spread evenly, as in ``clip``)
    and moves ``alpha`` onto the classes whose *texts* are near its labels' texts:
    ``target = (1 - alpha) * y_hat + alpha * y_hat @ softmax(class_emb @ class_emb.T / tau)``,
    with ``y_hat`` the labels normalised per row. Without it every trained class is pushed
    equally far from every other, whatever their texts say; with it, records of a class are
    pulled towards its textual neighbours too, so the ECG embedding takes on the geometry that
    an unseen class's text is scored in. Text -> ECG is as in ``clip``. ``alpha = 0`` is
    ``clip``.
    """

    def __init__(self, alpha=0.2, tau=0.1):
        super().__init__()
        self.alpha, self.tau = alpha, tau

    def forward(self, ecg_emb, class_emb, labels, logit_scale, logit_bias=None):
        logits = logit_scale * ecg_emb @ class_emb.T                     # (B, C)
        y = labels.float()
        rows = y.sum(1) > 0
        y_hat = y[rows] / y[rows].sum(1, keepdim=True)
        # The text geometry is a fixed target, not something to learn from: no gradient.
        neighbours = F.softmax(class_emb.detach() @ class_emb.detach().T / self.tau, dim=1)
        target = (1 - self.alpha) * y_hat + self.alpha * y_hat @ neighbours   # rows sum to 1
        e2t = -(target * F.log_softmax(logits[rows], dim=1)).sum() / rows.sum().clamp(min=1)
        return (e2t + self.text_to_ecg(logits, y)) / 2


class TripletLoss(nn.Module):
    """The seed's triplet loss: anchor ECG, positive = a label text, negative = a non-label text.

    ``mean over (record, positive, negative) of relu(margin - cos(a, p) + cos(a, n))``, over
    every positive/negative pair of each record (the seed sampled one; all pairs is the same
    expectation without the sampling noise, and deterministic). Cosines, so no scale or bias.
    """
    uses_scale, uses_bias = False, False
    calibrated = False

    def __init__(self, margin=0.2):
        super().__init__()
        self.margin = margin

    def forward(self, ecg_emb, class_emb, labels, logit_scale=None, logit_bias=None):
        sim = ecg_emb @ class_emb.T                                      # (B, C)
        y = labels.bool()
        # (B, C_pos, C_neg) hinge over all pairs; masked to real positive/negative pairs.
        hinge = F.relu(self.margin - sim[:, :, None] + sim[:, None, :])
        mask = y[:, :, None] & ~y[:, None, :]
        return (hinge * mask).sum() / mask.sum().clamp(min=1)


class FindingsSigmoidLoss(nn.Module):
    """``loss`` over every column, plus ``weight`` times a per-pair sigmoid on the measured
    findings' columns (those after the first ``n_classes``), averaged over the pairs.

    Under a softmax a statement true of most records ("a P wave before every QRS complex",
    "narrow QRS complex") takes a share of nearly every record's target and is barely told
    from its absence; as a binary decision per record it is. The statements stay in ``loss``
    too: under the sigmoid alone the rare ones were told worse (docs/findings.md).
    """
    uses_scale, uses_bias = True, True

    def __init__(self, loss, n_classes, weight=1.0):
        super().__init__()
        self.loss, self.n_classes, self.weight = loss, n_classes, weight
        self.sigmoid = SigmoidLoss()

    def forward(self, ecg_emb, class_emb, labels, logit_scale, logit_bias):
        c = self.n_classes
        # SigmoidLoss sums over its columns: divided by their count, a mean over the pairs.
        findings = self.sigmoid(ecg_emb, class_emb[c:], labels[:, c:], logit_scale,
                                logit_bias) / max(1, class_emb.shape[0] - c)
        return self.loss(ecg_emb, class_emb, labels, logit_scale, logit_bias) \
            + self.weight * findings


LOSSES = {"bce": SigmoidLoss, "clip": MultiLabelCLIPLoss, "soft-clip": TextSmoothedCLIPLoss,
          "triplet": TripletLoss}


def build_loss(name):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]()
