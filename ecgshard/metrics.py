"""Per-class and macro metrics of scores against multi-hot labels (scikit-learn underneath).

A class without positives (or without negatives) among the evaluated records has no AUROC:
it is reported as such and left out of every macro average, never counted as 0 or 1.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from tqdm.auto import tqdm


def evaluable(labels):
    """Boolean (C,): classes with at least one positive and one negative."""
    pos = labels.sum(axis=0)
    return (pos > 0) & (pos < labels.shape[0])


def per_class(scores, labels):
    """AUROC and AP per class; NaN where the class is not evaluable.

    Parameters
    ----------
    scores : (N, C) float, higher = more likely
    labels : (N, C) {0, 1}
    """
    ok = evaluable(labels)
    auroc = np.full(labels.shape[1], np.nan)
    ap = np.full(labels.shape[1], np.nan)
    for c in np.flatnonzero(ok):
        auroc[c] = roc_auc_score(labels[:, c], scores[:, c])
        ap[c] = average_precision_score(labels[:, c], scores[:, c])
    return auroc, ap


def per_class_fast(scores, labels):
    """``per_class`` without scikit-learn's per-call overhead (for bootstrap replicates).

    AUROC from average ranks (Mann-Whitney U, ties counted half), AP as scikit-learn defines
    it (precision at each distinct threshold, weighted by the recall step). Equal to
    ``per_class`` to rounding (tested).
    """
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    n_pos = labels.sum(axis=0)
    n_neg = labels.shape[0] - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    ranks = rankdata(scores, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = ((ranks * labels).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    ap = np.full(labels.shape[1], np.nan)
    for c in np.flatnonzero(ok):
        order = np.argsort(-scores[:, c], kind="mergesort")
        s, y = scores[order, c], labels[order, c]
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]     # end of each tie group
        tp = np.cumsum(y)[last]
        precision = tp / (last + 1)
        recall_step = np.diff(np.r_[0, tp]) / n_pos[c]
        ap[c] = (recall_step * precision).sum()
    return np.where(ok, auroc, np.nan), ap


def cross_auroc(scores, labels):
    """AUROC of every score column against every label column, from average ranks.

    Parameters
    ----------
    scores : (N, S) float, higher = more likely
    labels : (N, C) {0, 1}

    Returns (S, C): entry (s, c) is how well score s ranks the positives of class c; NaN for a
    class without positives or negatives. ``cross_auroc(x, y)[c, c]`` is ``per_class``'s AUROC.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=np.float64)
    n_pos = labels.sum(axis=0)
    n_neg = labels.shape[0] - n_pos
    ranks = rankdata(scores, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (ranks.T @ labels - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auroc[:, (n_pos == 0) | (n_neg == 0)] = np.nan
    return auroc


def macro(values):
    """Mean over the classes that have a value (NaN = not evaluable); NaN if none has."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def micro_auroc(scores, labels, classes=None):
    cols = np.flatnonzero(evaluable(labels)) if classes is None else classes
    if len(cols) == 0:
        return float("nan")
    return float(roc_auc_score(labels[:, cols].ravel(), scores[:, cols].ravel()))


def at_threshold(scores, labels, threshold):
    """Sensitivity, specificity and F1 per class at ``threshold`` (scalar or (C,))."""
    pred = scores >= np.broadcast_to(threshold, scores.shape[1:])
    y = labels.astype(bool)
    tp = (pred & y).sum(0)
    fp = (pred & ~y).sum(0)
    fn = (~pred & y).sum(0)
    tn = (~pred & ~y).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    ok = evaluable(labels)
    return (np.where(ok, sens, np.nan), np.where(ok, spec, np.nan), np.where(ok, f1, np.nan))


def youden_threshold(scores, labels):
    """Per-class threshold maximising sensitivity + specificity - 1 (NaN if not evaluable)."""
    out = np.full(labels.shape[1], np.nan)
    for c in np.flatnonzero(evaluable(labels)):
        fpr, tpr, thr = roc_curve(labels[:, c], scores[:, c])
        out[c] = thr[np.argmax(tpr - fpr)]
    return out


def pooled_youden_threshold(scores, labels):
    """One threshold for all classes: the one maximising mean Youden J over the evaluable
    classes. Used to carry a threshold from the training classes to unseen ones."""
    cols = np.flatnonzero(evaluable(labels))
    if len(cols) == 0:
        return float("nan")
    candidates = np.quantile(scores[:, cols], np.linspace(0.01, 0.99, 197))
    best, best_j = candidates[0], -np.inf
    for t in candidates:
        sens, spec, _ = at_threshold(scores[:, cols], labels[:, cols], t)
        j = np.nanmean(sens + spec - 1)
        if j > best_j:
            best, best_j = t, j
    return float(best)


def bootstrap_per_class(scores, labels, n_boot=1000, seed=0, groups=None):
    """Per-class AUROC and AP on ``n_boot`` bootstrap resamples.

    ``groups`` (N,): the resampling unit of each record, e.g. its patient; all records of a
    drawn patient enter together, so a patient with several ECGs does not narrow the interval.
    Without it, records are resampled.

    Returns ``{"auroc": (n_boot, C), "ap": (n_boot, C)}``, NaN where a replicate holds no
    positive (or no negative) of a class; intervals of a macro figure come from the
    replicates' ``macro_rows``.
    """
    rng = np.random.default_rng(seed)
    unit = np.arange(len(labels)) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_units = int(unit.max()) + 1 if len(unit) else 0
    shape = (n_boot, labels.shape[1])
    out = {"auroc": np.full(shape, np.nan), "ap": np.full(shape, np.nan)}
    for b in tqdm(range(n_boot), desc="bootstrap", unit="draw", disable=None, leave=False):
        drawn = np.bincount(rng.integers(0, n_units, n_units), minlength=n_units)
        idx = np.repeat(np.arange(len(labels)), drawn[unit])      # each record x its unit's draws
        out["auroc"][b], out["ap"][b] = per_class_fast(scores[idx], labels[idx])
    return out


def macro_rows(replicates):
    """Macro of each replicate over one fixed class set: the columns given. A replicate in
    which any of them is not evaluable is NaN (left out of the interval, never averaged over
    fewer classes, which would change what the interval is of)."""
    replicates = np.asarray(replicates, dtype=float)
    return replicates.mean(axis=1)


def permutation_null(scores, labels, n_perm=1000, seed=0):
    """Macro AUROC over the columns of ``labels`` with the records' label rows shuffled.

    Rows are permuted whole, so co-occurrence between classes is kept and only the link between
    a record's ECG and its labels is broken: the distribution of a model that learned nothing.
    Returns (n_perm,) macro AUROCs.
    """
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    labels = labels.astype(bool)
    ranks = rankdata(scores, axis=0)
    n_pos = labels.sum(axis=0)
    n_neg = len(labels) - n_pos
    out = np.empty(n_perm)
    for i in range(n_perm):
        y = labels[rng.permutation(len(labels))]
        auroc = ((ranks * y).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        out[i] = auroc.mean()
    return out


def null_position(value, null):
    """Where ``value`` falls in a null distribution: one-sided p (the share of null draws at or
    above it, with the +1 correction) and its percentile."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if value is None or not np.isfinite(value) or not len(null):
        return {"p": None, "percentile": None}
    return {"p": round(float((1 + (null >= value).sum()) / (1 + len(null))), 6),
            "percentile": round(float(100 * (null < value).mean()), 2)}


MIN_USABLE_REPLICATES = 10


def percentile_ci(samples, level=0.95):
    """Percentile interval of the finite samples, or None when fewer than half of them (or
    fewer than ``MIN_USABLE_REPLICATES``) are finite: an interval of the few resamples that
    happened to hold a positive says nothing (with two, it can exclude its own point)."""
    samples = np.asarray(samples, dtype=float)
    drawn = len(samples)
    samples = samples[np.isfinite(samples)]
    if len(samples) < max(MIN_USABLE_REPLICATES, drawn / 2):
        return None
    tail = 100 * (1 - level) / 2
    return [round(float(np.percentile(samples, tail)), 6),
            round(float(np.percentile(samples, 100 - tail)), 6)]
