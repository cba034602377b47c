"""How a run scores ECG embeddings against class texts (``Scorer``): the one rule ``zeroshot``,
its controls and thresholds, ``predict`` and ``ZeroShotClassifier`` share."""
from __future__ import annotations

import numpy as np

from .errors import ECGShardError


class Scorer:
    """How an embedding scores against class texts, the same for the own texts, the wrong
    texts, the untrained controls, the trained classes and the validation thresholds:

    - ``cosine``: ``emb @ row``, as trained;
    - ``centered``: cosine to each text row minus the mean of the run's training-class rows,
      renormalised: the direction every class text shares ("something is abnormal") is taken
      out of the text side (from the run alone, no evaluated labels);
    - ``record-z``: each record's cosines standardised across every text of the set's
      vocabulary, so a record near every abnormal text does not score high on all of them;
    - ``findings`` (a run trained with ``--findings``): each text row plus its reading in the
      trained finding statements, renormalised: a class is scored also through the measured
      findings its text is nearest to, which the encoder was trained to tell apart. The
      reading is taken sentence by sentence (``sentences``: each row's reading sentences,
      ``TextMatrix.sentences``; the row alone where none are given): each sentence's
      statements weighted by a softmax of its cosine to each (temperature ``FINDINGS_TAU``),
      the sentences' readings averaged. A definition's one embedding blurs its parts ("heart
      rate below 60" beside "a P wave before every QRS"); each part alone finds its statement;
    - ``findings-unseen``: ``findings`` for the rows a caller marks (``through``: zeroshot
      marks its unseen classes, and their wrong texts alike), cosine for the rest — the
      trained and related classes, which reading through the statements lowers
      (docs/findings.md); cosine throughout for a run that trained no statements.
    """

    FINDINGS_TAU = 0.05

    def __init__(self, mode, train_rows, candidate_rows, finding_rows=None, finding_codes=()):
        self.mode = mode
        self.center = np.asarray(train_rows, dtype=np.float32).mean(0)
        self.candidates = np.asarray(candidate_rows, dtype=np.float32)
        self.has_findings = finding_rows is not None and len(finding_rows) > 0
        if mode == "findings" and not self.has_findings:
            raise ECGShardError("--scoring findings needs a run trained with --findings "
                                "(this run trained no finding statements)")
        self.findings = finding_rows
        self.finding_codes = list(finding_codes)

    @property
    def reads_through(self):
        """Whether the rows a caller marks (``through``) score otherwise than the rest."""
        return self.mode == "findings-unseen" and self.has_findings

    def reads(self, n, through=None):
        """(n,) bool: the rows this rule reads through the statements — every row under
        ``findings``, the rows ``through`` marks under ``findings-unseen``, none otherwise."""
        if self.mode == "findings":
            return np.ones(n, bool)
        if self.reads_through and through is not None:
            return np.asarray(through, bool)
        return np.zeros(n, bool)

    def rows(self, rows, through=None, sentences=None):
        if self.mode == "centered":
            return _unit(rows - self.center)
        read = self.reads(len(rows), through)
        if not read.any():
            return rows
        return np.where(read[:, None], _unit(_unit(rows) + self.reading(rows, sentences)), rows)

    def reading(self, rows, sentences=None):
        """(R, D) unit rows: each row's reading in the trained statements, the mean over its
        sentences (the row itself where ``sentences`` is None) of each sentence's softmax-
        weighted statement rows."""
        weights, owner = self._sentence_weights(rows, sentences)
        return _unit(_mean_by(_unit(weights @ self.findings), owner, len(rows)))

    def statement_weights(self, rows, sentences=None):
        """(R, F): each row's weight on each trained statement, averaged over its sentences —
        what a class read through the statements is read through."""
        weights, owner = self._sentence_weights(rows, sentences)
        return _mean_by(weights, owner, len(rows))

    def _sentence_weights(self, rows, sentences):
        groups = [r[None] for r in rows] if sentences is None else sentences
        if len(groups) != len(rows):
            raise ECGShardError(f"{len(groups)} sets of reading sentences for {len(rows)} rows")
        if not groups:
            return np.zeros((0, len(self.findings)), np.float32), np.zeros(0, np.int64)
        flat = np.concatenate(groups).astype(np.float32)
        weights = flat @ self.findings.T / self.FINDINGS_TAU
        weights = np.exp(weights - weights.max(axis=1, keepdims=True))
        owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        return weights / weights.sum(axis=1, keepdims=True), owner

    def __call__(self, emb, rows, through=None, sentences=None):
        """(N, R) scores of ``emb`` against ``rows``; ``through`` (R,) bool: the rows
        ``findings-unseen`` reads through the statements; ``sentences``: each row's reading
        sentences."""
        cos = emb @ self.rows(np.asarray(rows, dtype=np.float32), through, sentences).T
        if self.mode != "record-z":
            return cos
        every = emb @ self.candidates.T
        return (cos - every.mean(1, keepdims=True)) / every.std(1, keepdims=True).clip(min=1e-6)


def _mean_by(values, owner, n):
    """(n, ...) the mean of ``values`` over the rows each ``owner`` index names."""
    total = np.zeros((n,) + values.shape[1:], np.float32)
    np.add.at(total, owner, values)
    counts = np.bincount(owner, minlength=n).clip(min=1)
    return total / counts.reshape((n,) + (1,) * (values.ndim - 1))


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)
