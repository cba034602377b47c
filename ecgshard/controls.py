"""Is a zero-shot score specific to the class's text? The counterfactuals that would fake it.

Most abnormal classes are rare among normal records, so any "something is abnormal" direction
of the embedding ranks their positives high whatever the text says. Untrained encoders and
label permutation destroy that direction too, so beating them shows only *some* association.
Three controls ask the right question, per class and per group macro:

* **wrong-text null** — the class's labels scored with every other class text of the evaluated
  vocabulary (one per other concept; the normal reference texts left out, they are the
  baseline below): the own text's rank among all texts, a per-class p, and the p of the group
  macro against texts reassigned at random. A figure is *class-specific* only when it beats
  this null.
* **abnormality baseline** — a class-agnostic score, the same for every class: what the
  abnormality axis alone achieves, and the own text's margin over it. Two are formed, and each
  class is held to the one that scores it better: minus the cosine to the normal text (NORM's,
  else sinus rhythm's, where the run trained one) and the record's mean score over the
  wrong-text candidates (read as the class is read; needs no normal text). The mean is the
  stronger on the dev tree (0.796 against 0.717 on validation, ``docs/findings.md``): a record
  near every abnormal text scores high on all of them, whichever it carries.
* **within-abnormal AUROC** — positives against abnormal records only (normal records removed),
  where normal records cannot carry the abnormality axis.

A figure supports a **zero-shot claim** only when it beats all three counterfactuals that
would fake it: the untrained encoders, the wrong-text null and the abnormality score (the
margin's interval above zero). Every verdict says whether it does.

Across a collection of databases one more confound fakes a class: a label that only one source
carries (Ningbo's VCG-loop label, Chapman's rotations) is scored partly by telling that source
from the others. **Within-source AUROC** scores such a class among the records of the sources
that carry it.
"""
from __future__ import annotations

import numpy as np

from . import metrics

# The reference concepts: a normal record carries NORM's concept, or (in a vocabulary without
# one, as the Challenge's) sinus rhythm alone.
NORMAL, SINUS = "NORM", "SR"
WRONG_TEXT_DRAWS = 10000
ALPHA = 0.05


def _concepts(codes, graph, root):
    return [c for c in codes if graph.concept(c) == graph.concept(root)]


def normal_text_code(text_codes, graph, prefer=(), trained=None):
    """The text that stands for "normal": a NORM-concept code (those of ``prefer`` first), else
    a sinus-rhythm one; None when the text matrix has neither. With ``trained`` (a run's
    training classes) only a concept the run trained counts: the cosine to a text it never
    trained against is no direction the encoder learned, and "minus" it scores nothing."""
    ordered = list(dict.fromkeys(list(prefer) + list(text_codes)))
    available = set(text_codes)
    if trained is not None:
        learned = {graph.concept(c) for c in trained}
        available = {c for c in available if graph.concept(c) in learned}
    for root in (NORMAL, SINUS):
        found = [c for c in _concepts(ordered, graph, root) if c in available]
        if found:
            return found[0]
    return None


def normal_records(labels, codes, graph):
    """Boolean (N,): records read as normal. With a NORM-concept code in ``codes``, the records
    that carry it; otherwise those whose every label is sinus rhythm."""
    labels = np.asarray(labels, bool)
    normal = [i for i, c in enumerate(codes) if graph.concept(c) == graph.concept(NORMAL)]
    if normal:
        return labels[:, normal].any(axis=1)
    sinus = [i for i, c in enumerate(codes) if graph.concept(c) == graph.concept(SINUS)]
    if not sinus:
        return np.zeros(len(labels), bool)
    others = np.setdiff1d(np.arange(labels.shape[1]), sinus)
    return labels[:, sinus].any(axis=1) & ~labels[:, others].any(axis=1)


BASELINES = {"minus_normal_text": "minus the cosine to the normal text",
             "mean_over_texts": "the mean score over the wrong-text candidates"}


def abnormality_scores(normal_score, pool_scores, pool_scores_through, through):
    """The class-agnostic candidate scores, each (N, C): {name: scores} of ``BASELINES``.
    ``normal_score`` (N,) or None; ``pool_scores`` (N, P) every wrong-text candidate's score by
    cosine, ``pool_scores_through`` the same read through the statements (or None), used for
    the classes ``through`` marks, so that the mean is read as their own text is."""
    n_classes = len(through)
    out = {}
    if normal_score is not None:
        out["minus_normal_text"] = np.repeat(normal_score[:, None], n_classes, axis=1)
    if pool_scores is not None:
        mean = pool_scores.mean(axis=1)
        mean_through = mean if pool_scores_through is None else pool_scores_through.mean(axis=1)
        out["mean_over_texts"] = np.where(through[None, :], mean_through[:, None],
                                          mean[:, None])
    return out


def strongest_baseline(candidates, labels):
    """Each class's abnormality baseline: of the ``candidates`` ({name: (N, C)}), the one whose
    AUROC on the class's labels is higher. Chosen on the evaluated labels, so the baseline is
    at its best and the margin over it errs low. Returns the chosen scores (N, C) and their
    AUROCs (C,) (None and NaN without candidates), and per class the name chosen and every
    candidate's AUROC."""
    n_classes = labels.shape[1]
    columns = np.arange(n_classes)
    names = list(candidates)
    if not names:
        return None, np.full(n_classes, np.nan), [None] * n_classes, [{} for _ in columns]
    stacked = np.stack([candidates[n] for n in names])                      # (K, N, C)
    aurocs = np.stack([metrics.per_class_fast(s, labels)[0] for s in stacked])  # (K, C)
    pick = np.argmax(np.where(np.isfinite(aurocs), aurocs, -np.inf), axis=0)
    per_class = [{n: (None if not np.isfinite(a) else round(float(a), 6))
                  for n, a in zip(names, aurocs[:, c])} for c in columns]
    return (stacked[pick, :, columns].T, aurocs[pick, columns], [names[k] for k in pick],
            per_class)


def baseline_choice(rows):
    """For a macro's class rows: how many classes each candidate baseline was chosen for, and
    each candidate's macro AUROC where every class has it (``candidates_macro_auroc``)."""
    chosen = [r.get("abnormality_score") for r in rows]
    names = dict.fromkeys(n for r in rows for n in (r.get("abnormality_candidates") or {}))
    macros = {}
    for name in names:
        values = [(r.get("abnormality_candidates") or {}).get(name) for r in rows]
        if all(v is not None for v in values):
            macros[name] = round(float(np.mean(values)), 6)
    return {"chosen": {n: chosen.count(n) for n in names}, "candidates_macro_auroc": macros}


def wrong_text_pool(candidates, graph):
    """The texts a class may be scored with instead of its own: one code per concept of
    ``candidates`` (their first), the normal and sinus-rhythm concepts left out."""
    reference = {graph.concept(NORMAL), graph.concept(SINUS)}
    pool, seen = [], set()
    for code in candidates:
        concept = graph.concept(code)
        if concept not in reference and concept not in seen:
            seen.add(concept)
            pool.append(code)
    return pool


def own_vs_wrong(own, cross, pool, targets, graph):
    """Per class: the other texts' AUROCs of its labels and where its own text stands.

    ``own`` (C,) the own-text AUROCs, ``cross`` (P, C) the AUROC of each pool text's scores
    against each class's labels. A class's wrong texts are the pool less its own concept.
    Returns one dict per class: ``aurocs`` {code: AUROC}, ``rank`` of the own text among all
    (1 = best), ``p`` (share of wrong texts at or above the own, +1 corrected), and the best
    wrong text."""
    rows = []
    for i, code in enumerate(targets):
        keep = [j for j, t in enumerate(pool) if graph.concept(t) != graph.concept(code)
                and np.isfinite(cross[j, i])]
        values = cross[keep, i]
        if not np.isfinite(own[i]) or not len(keep):
            rows.append(None)
            continue
        best = int(np.argmax(values))
        rows.append({"n_texts": len(keep) + 1,
                     "rank": int(1 + (values > own[i]).sum()),
                     "p": round(float((1 + (values >= own[i]).sum()) / (1 + len(keep))), 6),
                     "mean": round(float(values.mean()), 6),
                     "q95": round(float(np.quantile(values, 0.95)), 6),
                     "best": {"code": pool[keep[best]], "auroc": round(float(values[best]), 6)},
                     "aurocs": {pool[j]: round(float(v), 6) for j, v in zip(keep, values)}})
    return rows


def reassignment_null(wrong, n_draws=WRONG_TEXT_DRAWS, seed=0):
    """Macro AUROC when every class of a macro is scored with one of its wrong texts drawn at
    random: (n_draws,). ``wrong``: per class, the array of its wrong-text AUROCs."""
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.choice(np.asarray(w, float), n_draws) for w in wrong])
    return draws.mean(axis=0)


def wrong_text_null(value, wrong, seed=0):
    """Where a macro AUROC ``value`` stands among macros of wrongly assigned texts, for the
    classes whose ``own_vs_wrong`` rows are ``wrong``: the null's mean and 95th percentile,
    the one-sided p, and each class's own-text rank among its texts."""
    null = reassignment_null([list(w["aurocs"].values()) for w in wrong], seed=seed)
    return {"null_mean": round(float(null.mean()), 6),
            "q95": round(float(np.quantile(null, 0.95)), 6), "draws": len(null),
            **metrics.null_position(value, null),
            "own_rank": [w["rank"] for w in wrong], "n_texts": [w["n_texts"] for w in wrong]}


def best_single_text(wrong):
    """The one text that, given to every class of a macro, scores them best (chosen on the
    evaluated labels: a diagnostic, optimistic by construction): (code, macro) or None.
    ``wrong``: per class, {code: AUROC}; only texts wrong for every class count."""
    common = set.intersection(*(set(w) for w in wrong)) if wrong else set()
    if not common:
        return None
    macros = {code: float(np.mean([w[code] for w in wrong])) for code in common}
    code = max(sorted(macros), key=macros.get)
    return {"code": code, "macro_auroc": round(macros[code], 6)}


def within_abnormal(scores, labels, normal):
    """AUROC per class of positives against the abnormal negatives only: a normal record is
    dropped unless it is a positive of that class. (C,), NaN where not evaluable."""
    out = np.full(labels.shape[1], np.nan)
    for c in range(labels.shape[1]):
        keep = labels[:, c].astype(bool) | ~normal
        out[c] = metrics.per_class_fast(scores[keep][:, [c]], labels[keep][:, [c]])[0][0]
    return out


def p_text(p):
    """A p value as text: below 0.001 it is said so, not rounded to "0.000" (a +1-corrected
    p is never 0)."""
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def within_source(scores, labels, sources):
    """Per class: the sources whose records carry its positives, and its AUROC among the
    records of those sources only (NaN where not evaluable there). Equal to the pooled AUROC
    for a class that every source carries."""
    sources = np.asarray(sources)
    aurocs, carriers = np.full(labels.shape[1], np.nan), []
    for c in range(labels.shape[1]):
        positive = labels[:, c].astype(bool)
        carriers.append(sorted(set(sources[positive].tolist())))
        keep = np.isin(sources, carriers[-1])
        aurocs[c] = metrics.per_class_fast(scores[keep][:, [c]], labels[keep][:, [c]])[0][0]
    return aurocs, carriers


COUNTERFACTUALS = ("the untrained encoders", "the wrong-text null",
                   "the class-agnostic abnormality score")


def unbeaten(group):
    """The counterfactuals that would fake a zero-shot figure (``COUNTERFACTUALS``) which the
    group's macro does not beat; [] when it beats all three, which is what a zero-shot claim
    needs. The abnormality score counts as beaten only when the margin's interval is above
    zero. None where the macro beats those formed but one was not (no untrained encoders or
    permutations, no wrong texts, no baseline or no interval): the claim is then unjudged."""
    ci = (group.get("abnormality_baseline") or {}).get("margin_ci")
    beaten = (group.get("distinguishable_from_nulls"), group.get("class_specific"),
              None if ci is None else bool(ci[0] > 0))
    missing = [name for name, ok in zip(COUNTERFACTUALS, beaten) if ok is False]
    return None if not missing and None in beaten else missing


def zero_shot_claim(group, unseen=True):
    """True only when every class of the macro is ``unseen`` and the macro beats every
    counterfactual; None where one is missing. A macro over seen or related classes is never
    a zero-shot figure, however well it scores."""
    if not unseen:
        return False
    missing = unbeaten(group)
    return None if missing is None else not missing


def verdict(group, unseen=True):
    """One sentence for a group macro, from the nulls and the controls in ``group``, ending
    with whether it supports a zero-shot claim (``unseen``: every class of it is unseen)."""
    wt, base = group.get("wrong_text"), group.get("abnormality_baseline")
    if group.get("distinguishable_from_nulls") is False:
        head = "not distinguishable from untrained encoders and label permutation"
    elif wt is None or wt.get("p") is None:
        head = "association only: no wrong-text null could be formed"
    elif not group.get("class_specific"):
        head = (f"NOT class-specific: other classes' texts score these classes as well "
                f"(wrong-text p {p_text(wt['p'])})")
    else:
        head = f"class-specific: beats the wrong-text null (p {p_text(wt['p'])})"
    if base and base.get("margin") is not None:
        ci = base.get("margin_ci")
        above = ci is not None and ci[0] > 0
        head += (f"; {base['margin']:+.3f} over the class-agnostic abnormality score"
                 + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
                 + ("" if above else " (not above it)"))
    if not unseen:
        return head + "; not a zero-shot figure: it has seen or related classes"
    missing = unbeaten(group)
    if missing is None:
        return head + "; zero-shot claim not judged: a control was not formed"
    if missing:
        return head + f"; no zero-shot claim: not above {' or '.join(missing)}"
    return head + "; zero-shot claim: above all three counterfactuals"
