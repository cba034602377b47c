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
      trained finding statements — their rows weighted by a softmax of the text's cosine to
      each (temperature ``FINDINGS_TAU``) — renormalised: a class is scored also through the
      measured findings its text is nearest to, which the encoder was trained to tell apart;
    - ``findings-unseen``: ``findings`` for the rows a caller marks (``through``: zeroshot
      marks its unseen classes, and their wrong texts alike), cosine for the rest — the
      trained and related classes, which reading through the statements lowers
      (docs/findings.md); cosine throughout for a run that trained no statements.
    """

    FINDINGS_TAU = 0.05

    def __init__(self, mode, train_rows, candidate_rows, finding_rows=None):
        self.mode = mode
        self.center = np.asarray(train_rows, dtype=np.float32).mean(0)
        self.candidates = np.asarray(candidate_rows, dtype=np.float32)
        self.has_findings = finding_rows is not None and len(finding_rows) > 0
        if mode == "findings" and not self.has_findings:
            raise ECGShardError("--scoring findings needs a run trained with --findings "
                                "(this run trained no finding statements)")
        self.findings = finding_rows

    @property
    def reads_through(self):
        """Whether the rows a caller marks (``through``) score otherwise than the rest."""
        return self.mode == "findings-unseen" and self.has_findings

    def rows(self, rows, through=None):
        if self.mode == "centered":
            return _unit(rows - self.center)
        if self.mode == "findings" or (self.reads_through and through is not None):
            weights = rows @ self.findings.T / self.FINDINGS_TAU
            weights = np.exp(weights - weights.max(axis=1, keepdims=True))
            reading = (weights / weights.sum(axis=1, keepdims=True)) @ self.findings
            read = _unit(_unit(rows) + _unit(reading))
            if self.mode == "findings":
                return read
            return np.where(np.asarray(through, bool)[:, None], read, rows)
        return rows

    def __call__(self, emb, rows, through=None):
        """(N, R) scores of ``emb`` against ``rows``; ``through`` (R,) bool: the rows
        ``findings-unseen`` reads through the statements."""
        cos = emb @ self.rows(np.asarray(rows, dtype=np.float32), through).T
        if self.mode != "record-z":
            return cos
        every = emb @ self.candidates.T
        return (cos - every.mean(1, keepdims=True)) / every.std(1, keepdims=True).clip(min=1e-6)


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)
