"""Presentation of zero-shot reports: the per-class CSV, the plots, the terminal summary,
``ecgshard report``'s side-by-side table and the markdown tables of the experiments. One
number formatter (``num``) for all of them; nothing here computes a figure.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from . import concepts, shards
from .config import fold_ranges
from .controls import BASELINES, p_text
from .errors import ECGShardError

# Published figures of related designs, shown only where the experiment matches theirs in
# kind, and always marked as not comparable: other text models (Bio_ClinicalBERT), other data
# (the whole of PTB-XL, MIMIC-IV-ECG reports) and no control for class specificity.
NOT_COMPARABLE = "not comparable: other text model, data and class sets"
# What a verdict needs (``controls.verdict``), said once for every experiment table.
CLAIM_RULE = ("class-specific only when it beats the wrong-text null (p < 0.05), and zero-shot "
              "only when it also beats the untrained encoders and the abnormality score (the "
              "margin's interval above zero)")
PUBLISHED = {"b_unseen_macro_auroc": "0.57-0.61", "b_seen_macro_auroc": "0.70-0.74",
             # ECG-text models trained on MIMIC-IV-ECG reports, zero-shot macro AUROC averaged
             # over PTB-XL super/sub/form/rhythm, CPSC2018 and Chapman-Shaoxing
             "c_all_macro_auroc": "0.75-0.81 (averaged over datasets, no seen/unseen split)"}

# What each transfer experiment trained on, and what makes a scored class "seen" there.
TRAINED = {"ptbxl": ("PTB-XL", "every PTB-XL class", "a code of its concept was a PTB-XL "
                     "training class"),
           "mimic": ("MIMIC-IV-ECG", "every MIMIC-IV-ECG machine statement on at least "
                     "{min_count} records", "a trained machine statement names its concept")}
SCORED = {"ptbxl": "PTB-XL", "cinc2021": "Challenge 2021 databases"}


def num(x, digits=3, missing="n/a"):
    """A figure as text: ``digits`` decimals for a float, ``missing`` for None or NaN."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return missing
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def interval(ci):
    """' [lo, hi]' of a 95% interval, or nothing where there is none."""
    return f" [{num(ci[0])}, {num(ci[1])}]" if ci else ""


# ---------------------------------------------------------------- files

def write_per_class_csv(path, classes):
    fields = ["code", "name", "group", "via", "why", "n_pos", "n", "in_macro", "prevalence",
              "auroc", "auroc_ci_low", "auroc_ci_high", "control_auroc_min", "control_auroc_max",
              "own_text_rank", "n_texts", "wrong_text_p", "wrong_text_mean", "best_wrong_text",
              "best_wrong_text_auroc", "abnormality_auroc", "within_abnormal_auroc",
              "within_source_auroc", "single_source",
              "ap", "sensitivity", "specificity", "f1", "threshold"]
    with shards.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for c in classes:
                ci = c["auroc_ci"] or [None, None]
                ctrl = c.get("control_auroc") or {}
                wrong = c.get("wrong_text") or {}
                w.writerow(dict(c, auroc_ci_low=ci[0], auroc_ci_high=ci[1],
                                control_auroc_min=ctrl.get("min"),
                                control_auroc_max=ctrl.get("max"),
                                own_text_rank=wrong.get("rank"), n_texts=wrong.get("n_texts"),
                                wrong_text_p=wrong.get("p"), wrong_text_mean=wrong.get("mean"),
                                best_wrong_text=(wrong.get("best") or {}).get("code"),
                                best_wrong_text_auroc=(wrong.get("best") or {}).get("auroc")))


GROUP_COLORS = {"seen": "tab:blue", "related": "tab:green", "unseen": "tab:orange"}


def write_plots(out, scores, labels, targets, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _roc_pr(plt, out / "roc_pr.png", scores, labels, targets, classes)
    _auroc_bars(plt, out / "auroc_per_class.png", classes)


def _roc_pr(plt, png, scores, labels, targets, classes):
    """ROC and precision-recall curves of up to 20 classes (the unseen ones when any), each
    class one colour of tab20 and its own line style, in both panels; the PR panel marks
    each class's prevalence, the precision of a score that knows nothing."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    shown = [i for i, c in enumerate(classes) if c["auroc"] is not None and c["group"] == "unseen"]
    shown = (shown or [i for i, c in enumerate(classes) if c["auroc"] is not None])[:20]
    colours = plt.get_cmap("tab20").colors
    styles = ("-", "--", "-.", ":")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for k, i in enumerate(shown):
        style = dict(color=colours[k % 20], ls=styles[k % len(styles)], lw=1.2)
        fpr, tpr, _ = roc_curve(labels[:, i], scores[:, i])
        prec, rec, _ = precision_recall_curve(labels[:, i], scores[:, i])
        prevalence = float(labels[:, i].mean())
        ap = average_precision_score(labels[:, i], scores[:, i])
        ax1.plot(fpr, tpr, label=f"{targets[i]} ({classes[i]['auroc']:.2f})", **style)
        ax2.plot(rec, prec, label=f"{targets[i]} (AP {ap:.2f}, prevalence {prevalence:.2f})",
                 **style)
        ax2.axhline(prevalence, color=colours[k % 20], ls=":", lw=0.8)
    ax1.plot([0, 1], [0, 1], "k:", lw=1)
    ax1.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (zero-shot; AUROC)")
    ax2.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02),
            title="precision-recall (dotted: each class's prevalence)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7, loc="lower right" if ax is ax1 else "upper right")
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _auroc_bars(plt, png, classes):
    """One bar per class with its positives written on it; hatched when too few positives
    enter the macro, and then drawn without an interval: a bootstrap over one or two
    positives gives an interval that looks tight and means nothing."""
    import textwrap

    from matplotlib.patches import Patch

    ok = [c for c in classes if c["auroc"] is not None]
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * len(ok) + 2.5), 6.5), layout="constrained")
    x = np.arange(len(ok))
    in_macro = [c.get("in_macro", True) for c in ok]
    bars = ax.bar(x, [c["auroc"] for c in ok], color=[GROUP_COLORS[c["group"]] for c in ok],
                  hatch=[None if m else "//" for m in in_macro], edgecolor="white")
    # The interval itself, not lengths around the bar: a percentile bootstrap interval may
    # exclude the point estimate (a skewed resampling distribution with few positives).
    with_ci = [(i, c["auroc_ci"]) for i, c, m in zip(x, ok, in_macro) if c["auroc_ci"] and m]
    if with_ci:
        ax.vlines([i for i, _ in with_ci], [ci[0] for _, ci in with_ci],
                  [ci[1] for _, ci in with_ci], color="k", lw=1)
    for bar, c in zip(bars, ok):
        if c.get("n_pos") is not None:
            ax.text(bar.get_x() + bar.get_width() / 2, 0.02, f"{c['n_pos']} positives",
                    rotation=90, ha="center", va="bottom", fontsize=8, color="black")
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.set_xticks(x, [c["code"] if c["code"] == c["name"] else
                      f"{textwrap.shorten(c['name'], 32, placeholder='...')} ({c['code']})"
                      for c in ok], rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1), ylabel="AUROC (95% bootstrap CI)", title="per-class zero-shot AUROC")
    groups = [g for g in GROUP_COLORS if any(c["group"] == g for c in ok)]
    handles = [Patch(color=GROUP_COLORS[g], label=g) for g in groups]
    if not all(in_macro):
        handles.append(Patch(facecolor="lightgray", hatch="//", edgecolor="white",
                             label="too few positives: not in the macro, no interval"))
    ax.legend(handles=handles, fontsize=8, loc="lower right", framealpha=0.9)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def learning_curve(log_path, png):
    """A run's training loss and validation AUROC per epoch (``RUN/log.jsonl``), the best
    epoch marked: the checkpoint ``best`` is that epoch's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    if not records:
        return
    epochs = [r["epoch"] for r in records]
    fig, loss_ax = plt.subplots(figsize=(7, 4), layout="constrained")
    loss_ax.plot(epochs, [r["loss"] for r in records], color="tab:gray", label="training loss")
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    auroc_ax = loss_ax.twinx()
    val = [r.get("val_macro_auroc") for r in records]
    auroc_ax.plot(epochs, val, color="tab:blue", marker=".", label="validation macro AUROC "
                  "(trained classes)")
    if any("val_findings_macro_auroc" in r for r in records):
        auroc_ax.plot(epochs, [r.get("val_findings_macro_auroc") for r in records],
                      color="tab:green", ls="--", label="validation macro AUROC (findings)")
    finite = [(v, e) for v, e in zip(val, epochs) if v is not None and v == v]
    if finite:
        best, at = max(finite)
        auroc_ax.axvline(at, color="tab:blue", ls=":", lw=1)
        auroc_ax.annotate(f"best {best:.3f} (epoch {at})", (at, best), fontsize=8,
                          xytext=(4, -12), textcoords="offset points")
    auroc_ax.set(ylabel="AUROC")
    handles = loss_ax.get_legend_handles_labels()[0] + auroc_ax.get_legend_handles_labels()[0]
    auroc_ax.legend(handles=handles, fontsize=8, loc="center right")
    loss_ax.set_title(f"{Path(log_path).parent.name}: learning curve", fontsize=10)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _few(counts):
    """Classes left out of a macro with their positives, SNOMED codes named."""
    return ", ".join(f"{concepts.display(c)} ({n})" for c, n in counts.items())


# ---------------------------------------------------------------- terminal

def summary_lines(report):
    p = report["provenance"]
    lines = [f"zero-shot on {p['n_records']} records ({p['n_patients']} patients), folds "
             f"{p['folds']} of {p['shards']}",
             f"  text model: {p['text_model']}; threshold: {p['threshold_rule']}",
             f"  scoring: {p.get('scoring', 'cosine')}"
             f"{_reading_text(p.get('scoring', 'cosine'), p)}",
             f"  leads: {', '.join(p['leads'])}"
             + ("" if len(p["leads"]) == 12 else " (the others zeroed; thresholds were chosen "
                                                 "on 12-lead validation records)"),
             f"  macros over classes with >= {p['min_positives_for_macro']} positives; 95% CIs "
             f"resample patients"]
    present = [name for name in concepts.GROUPS if name in report["groups"]]
    # With one group present "all" is the same classes: one block, not two identical ones.
    for name in present + (["all"] if len(present) > 1 else []):
        g = report["groups"][name]
        lines.append(f"  {name:>7}: {g['n_classes']:3d} classes  macro AUROC "
                     f"{num(g['macro_auroc'])}{interval(g.get('macro_auroc_ci'))}  macro AP "
                     f"{num(g['macro_ap'])}  "
                     f"F1 {num(g.get('macro_f1'))}  {null_text(g)}")
        if g.get("macro_auroc") is not None:
            lines.append(f"           {controls_text(g)}")
            lines.append(f"           verdict: {g['verdict']}")
        if g["excluded_few_positives"]:
            lines.append(f"           not in the macro (too few positives): "
                         f"{_few(g['excluded_few_positives'])}")
    ref = report["references"].get("trained_classes_same_folds")
    if ref:
        lines.append(f"  reference trained classes, same records: macro AUROC "
                     f"{num(ref['macro_auroc'])}")
    told = report["references"].get("trained_statements_same_records")
    if told:
        lines.append(f"  reference trained statements, same records: macro AUROC "
                     f"{num(told['macro_auroc'])} over {told['n_statements']} statements")
    if report["not_evaluable"]:
        lines.append(f"  not evaluable (no positives or no negatives): {report['not_evaluable']}")
    if report["provenance"].get("classes_without_text"):
        lines.append(f"  not scored (no text embedding): "
                     f"{report['provenance']['classes_without_text']}")
    return lines


def null_text(group):
    """'control 0.51 [0.44-0.58], perm p 0.001: distinguishable' for one group's macro."""
    parts = []
    ctrl = group.get("control")
    if ctrl:
        parts.append(f"random encoders {num(ctrl['mean'])} [{num(ctrl['min'])}, "
                     f"{num(ctrl['max'])}] over {len(ctrl['values'])} seeds")
    perm = group.get("permutation")
    if perm and perm["p"] is not None:
        parts.append(f"permutation p {perm['p']:.3f}")
    if "distinguishable_from_nulls" in group:
        parts.append("above both nulls" if group["distinguishable_from_nulls"]
                     else "NOT distinguishable from the nulls")
    return "; ".join(parts)


def controls_text(group):
    """'wrong texts 0.61 (own rank 3.0 of 48, p 0.004); abnormality score 0.70 (margin +0.05);
    within abnormal 0.66' for one group's macro."""
    parts = []
    wrong = group.get("wrong_text")
    if wrong:
        parts.append(f"wrong texts {num(wrong['null_mean'])} ({_own_rank_text(wrong)}, "
                     f"p {p_text(wrong['p'])})")
    base = group.get("abnormality_baseline")
    if base and base.get("macro_auroc") is not None:
        parts.append(f"class-agnostic abnormality score {num(base['macro_auroc'])} "
                     f"({_chosen_text(base)}; margin {base['margin']:+.3f}"
                     f"{signed_interval(base.get('margin_ci'))})")
    within = group.get("within_abnormal") or {}
    if within.get("macro_auroc") is not None:
        parts.append(f"within abnormal records {num(within['macro_auroc'])} (abnormality score "
                     f"{num(within.get('abnormality_macro_auroc'))})")
    return "; ".join(parts) or "no class-specificity control"


def _own_rank_text(wrong):
    ranks, texts = wrong.get("own_rank") or [], wrong.get("n_texts") or []
    return f"own text ranks {np.mean(ranks):.1f} of {np.mean(texts):.0f} on average" \
        if ranks else "no own-text rank"


def signed_interval(ci):
    return f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""


def report_table(report_dirs):
    """``ecgshard report``: several reports side by side, one row per figure."""
    missing = [str(d) for d in report_dirs if not (Path(d) / "report.json").exists()]
    if missing:
        raise ECGShardError(f"no report.json in {', '.join(missing)}: give directories "
                            f"`ecgshard zeroshot --out` wrote")
    reports = [shards.read_json(Path(d) / "report.json", "run `ecgshard zeroshot` again")
               for d in report_dirs]
    rows = [("records", lambda r: str(r["provenance"]["n_records"])),
            ("folds", lambda r: fold_ranges(r["provenance"]["folds"])),
            ("text model", lambda r: str(r["provenance"]["text_model"]).split(" (")[0])]
    for group in concepts.GROUPS + ("all",):
        for key in ("n_classes", "macro_auroc", "macro_ap", "macro_f1"):
            rows.append((f"{group} {key}", lambda r, g=group, k=key: num(r["groups"].get(g, {})
                                                                            .get(k))))
    rows.append(("trained classes AUROC", lambda r: num(
        r["references"].get("trained_classes_same_folds", {}).get("macro_auroc"))))
    rows.append(("trained statements AUROC", lambda r: num(_statements_macro(r))))
    rows.append(("random control AUROC", lambda r: num(
        r["references"].get("random_encoder_control", {}).get("macro_auroc"))))
    rows.append(("unseen vs nulls", lambda r: {True: "above", False: "NOT above", None: "-"}[
        r["groups"].get("unseen", {}).get("distinguishable_from_nulls")]))
    rows.append(("unseen wrong-text p", lambda r: p_text(
        (r["groups"].get("unseen", {}).get("wrong_text") or {}).get("p"))))
    rows.append(("unseen abnormality", lambda r: num(
        (r["groups"].get("unseen", {}).get("abnormality_baseline") or {}).get("macro_auroc"))))
    rows.append(("unseen within abnormal", lambda r: num(
        (r["groups"].get("unseen", {}).get("within_abnormal") or {}).get("macro_auroc"))))
    for key, label in (("class_specific", "class-specific"), ("zero_shot_claim",
                                                              "zero-shot claim")):
        rows.append((f"unseen {label}", lambda r, k=key: {True: "yes", False: "NO", None: "-"}[
            r["groups"].get("unseen", {}).get(k)]))
    names = [Path(d).name for d in report_dirs]
    cells = [[get(r) for r in reports] for _, get in rows]
    width = max(len(x) for x in names + [c for row in cells for c in row]) + 2
    lines = [f"{'':<24}" + "".join(f"{n:>{width}}" for n in names)]
    for (label, _), row in zip(rows, cells):
        lines.append(f"{label:<24}" + "".join(f"{c:>{width}}" for c in row))
    return lines


# ---------------------------------------------------------------- markdown (experiments)

def _class_cells(c):
    """The positives | AUROC [CI] | AP cells every per-class table ends with."""
    return f"{c['n_pos']} | {num(c['auroc'])}{interval(c['auroc_ci'])} | {num(c['ap'])} |"


def _control_cell(group):
    """'0.512 [0.44, 0.58] (10 seeds); perm p 0.001; above both' for a group's macro."""
    ctrl, perm = group.get("control"), group.get("permutation")
    parts = []
    if ctrl:
        parts.append(f"{num(ctrl['mean'])} [{num(ctrl['min'])}, {num(ctrl['max'])}]")
    if perm and perm.get("p") is not None:
        parts.append(f"perm p {perm['p']:.3f}")
    if "distinguishable_from_nulls" in group:
        parts.append("**above both nulls**" if group["distinguishable_from_nulls"] else
                     "**not distinguishable from the nulls**")
    return "; ".join(parts) or "—"


def figures_a(reports):
    """Experiment A's figures per split (lists, one entry per split)."""
    groups = [r["groups"].get("unseen", {}) for r in reports]
    trained = [r["references"].get("trained_classes_same_folds", {}) for r in reports]
    return {
        "holdouts": [r["provenance"]["holdout"] for r in reports],
        "unseen_macro_auroc": [g.get("macro_auroc") for g in groups],
        "unseen_macro_ap": [g.get("macro_ap") for g in groups],
        "unseen_classes": [g.get("classes", []) for g in groups],
        **{f"unseen_macro_{m}": [g.get(f"macro_{m}") for g in groups]
           for m in ("sensitivity", "specificity", "f1")},
        "unseen_wrong_text_p": [(g.get("wrong_text") or {}).get("p") for g in groups],
        "unseen_abnormality_macro_auroc": [(g.get("abnormality_baseline") or {})
                                           .get("macro_auroc") for g in groups],
        "unseen_within_abnormal_macro_auroc": [(g.get("within_abnormal") or {})
                                               .get("macro_auroc") for g in groups],
        "class_specific": [g.get("class_specific") for g in groups],
        "zero_shot_claim": [g.get("zero_shot_claim") for g in groups],
        "trained_macro_auroc": [t.get("macro_auroc") for t in trained],
        "trained_macro_ap": [t.get("macro_ap") for t in trained],
        "trained_statements_macro_auroc": [_statements_macro(r) for r in reports],
        "control_macro_auroc": [v for g in groups
                                for v in (g.get("control") or {}).get("values", [])],
        "above_both_nulls": [bool(g.get("distinguishable_from_nulls")) for g in groups],
        "checkpoint_val_macro_auroc": [r["provenance"].get("checkpoint_val_macro_auroc")
                                       for r in reports]}


def _pooled_rows(pooled, scored):
    """The headline table's rows of the pooled unseen figure and its controls."""
    if pooled is None:
        return [f"| unseen (held-out) classes | no split has a held-out class with enough "
                f"{scored} positives | |"]
    wrong, base = pooled.get("wrong_text") or {}, pooled.get("abnormality_baseline") or {}
    within, ctrl = pooled.get("within_abnormal") or {}, pooled.get("control") or {}
    unit = "patients and classes" if pooled["bootstrap"] else "not available"
    return [
        f"| **unseen (held-out) classes, macro AUROC** over {pooled['n_instances']} (split, "
        f"class) instances of {pooled['n_classes']} classes | **{num(pooled['macro_auroc'])}"
        f"{interval(pooled['macro_auroc_ci'])}** | 95% interval resamples {unit} |",
        f"| wrong-text null: the same instances scored with other classes' texts | "
        f"{num(wrong.get('null_mean'))} (95th percentile {num(wrong.get('q95'))}) | own text "
        f"p {p_text(wrong.get('p'))}; {_own_rank_text(wrong)} |",
        f"| class-agnostic abnormality score, per class the stronger candidate | "
        f"{num(base.get('macro_auroc'))} | own text's margin "
        f"{num(base.get('margin'))}{signed_interval(base.get('margin_ci'))}"
        f"{_candidates_text(base)} |",
        f"| within abnormal records (normal records removed): own text / abnormality score | "
        f"{num(within.get('macro_auroc'))} / {num(within.get('abnormality_macro_auroc'))} | "
        f"normal records cannot carry a score here |",
        f"| untrained encoders, same instances ({ctrl.get('n_seeds', 0)} seeds, pooled per "
        f"seed) | {num(ctrl.get('mean'))} [{num(ctrl.get('min'))}, {num(ctrl.get('max'))}] | |",
        f"| **verdict** | {pooled['verdict']} | |"]


def markdown_a(cfg, manifest, reports, pooled=None):
    p0 = reports[0]["provenance"]
    f = figures_a(reports)
    trained = f["trained_macro_auroc"]
    above, val = sum(f["above_both_nulls"]), f["checkpoint_val_macro_auroc"]
    specific = sum(bool(x) for x in f["class_specific"])
    claimed = sum(bool(x) for x in f["zero_shot_claim"])
    # a split whose held-out classes all lack positives here has no macro to judge
    with_macro = sum(m is not None for m in f["unseen_macro_auroc"])
    of = f"{with_macro} with a macro" + (f" ({len(reports) - with_macro} without)"
                                         if with_macro < len(reports) else "")
    not_unseen = [c["code"] for r in reports for c in r["classes"] if c["group"] != "unseen"]
    scored = "test" if cfg.score == "test" else "validation"
    lines = [
        f"## Experiment A: held-out PTB-XL classes{' — ' + cfg.label if cfg.label else ''}",
        "",
        f"Command: `{cfg.command}`",
        "",
        f"Data: {manifest['n_records']} records from `{_where(manifest['source_dir'])}` "
        f"({manifest['fs']} Hz, {manifest['n_skipped']} skipped). Text model: "
        f"`{p0['text_model']}` ({p0['text_pooling']}; texts: {cfg.text.texts}, templates "
        f"{list(cfg.text.templates)}). {recipe_text(cfg.fit)}{members_text(cfg)}. Train folds "
        f"{fold_ranges(cfg.fit.train_folds)}, validation fold {fold_ranges(cfg.fit.val_folds)} "
        f"(checkpoint, threshold, and which classes may be held out: at least "
        f"{cfg.min_val_positives} validation positives; random splits exclude at "
        f"most {cfg.max_excluded:.0%} of the training records), "
        f"{scored} fold {fold_ranges(p0['folds'])} (reporting only"
        f"{'' if scored == 'test' else '; scored here to choose a recipe, not a test figure'}"
        f"). Each holdout is closed over "
        f"`ecgshard/data/concept_relations.csv` (synonyms, parents, children, near-siblings) "
        f"among every class present at any count, "
        f"and every record carrying a held-out statement at any likelihood is excluded from "
        f"training and validation; every held-out class is therefore *unseen*"
        f"{'' if not not_unseen else ' except ' + ', '.join(sorted(set(not_unseen)))}.",
        "",
        f"Leads scored: {_leads_text(p0)}. Scoring: `{cfg.zeroshot.scoring}`"
        f"{_reading_text(cfg.zeroshot.scoring, p0)} (`docs/zeroshot.md`). Threshold "
        f"(sensitivity, specificity, F1): "
        f"`{cfg.zeroshot.threshold}`, in split 0 {p0['threshold_rule']}.",
        "",
        f"The headline pools every held-out class with at least {cfg.zeroshot.min_positives} "
        f"{scored} positives over all splits. Controls (`docs/zeroshot.md`): the **wrong-text "
        f"null** scores each class with every other class text of the vocabulary "
        f"({len(p0.get('wrong_text_pool') or [])} candidates, normal texts excluded) and asks "
        f"how often texts reassigned at random do as well; the **abnormality baseline** scores "
        f"each class with a score that is the same for every class ({_baseline_text(p0)}); "
        f"**within-abnormal** AUROC removes the normal "
        f"records. A figure is called {CLAIM_RULE}. Nulls: "
        f"{cfg.zeroshot.control_seeds} untrained encoders per split (same pipeline, other "
        f"seeds) and {p0['permutations']} label permutations.",
        "",
        f"| figure ({scored} fold) | value | note |",
        "|---|---|---|",
        *_pooled_rows(pooled, scored),
        f"| splits whose unseen macro is above the untrained encoders and permutation | "
        f"{above} of {of} | |",
        f"| splits whose unseen macro is class-specific (beats the wrong-text null) | "
        f"{specific} of {of} | |",
        f"| splits whose unseen macro supports a zero-shot claim (beats all three controls) | "
        f"{claimed} of {of} | |",
        f"| unseen classes at the threshold: macro sensitivity / specificity / F1, mean over "
        f"splits | "
        f"{' / '.join(_mean(f[f'unseen_macro_{m}']) for m in ('sensitivity', 'specificity', 'f1'))}"
        f" | |",
        f"| trained classes, macro AUROC, mean over splits | {_mean(trained)} | same records |",
        *([f"| trained measured-finding statements, macro AUROC, mean over splits | "
           f"{_mean(f['trained_statements_macro_auroc'])} | same records; what unseen classes "
           f"are read through |"] if any(f["trained_statements_macro_auroc"]) else []),
        f"| validation macro AUROC, trained classes, mean over splits | {_mean(val)} | |",
        "",
        "Per split: the holdout the run used (after closure), the unseen macro, the nulls and "
        "the class-specificity controls:",
        "",
        "| split | held out (closed) | training records excluded | unseen classes in macro | "
        "macro AUROC [95% CI] | untrained encoders; permutation | wrong-text null (p) | "
        "abnormality score (margin) | within abnormal | verdict | not in macro (positives) |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(reports):
        g = r["groups"].get("unseen", {})
        few = _few(g.get("excluded_few_positives", {}))
        wrong, base = g.get("wrong_text") or {}, g.get("abnormality_baseline") or {}
        lines.append(
            f"| {i} | {', '.join(r['provenance']['holdout'])} | "
            f"{r.get('excluded_train_share', 0):.0%} | {g.get('n_classes', 0)} "
            f"| {num(g.get('macro_auroc'))}{interval(g.get('macro_auroc_ci'))} | "
            f"{_control_cell(g)} | {num(wrong.get('null_mean'))} ({p_text(wrong.get('p'))}) | "
            f"{num(base.get('macro_auroc'))} ({num(base.get('margin'))}) | "
            f"{num((g.get('within_abnormal') or {}).get('macro_auroc'))} | "
            f"{_short_verdict(g)} | {few or '—'} |")
    lines += ["", "Per held-out class (AUROC with a 95% bootstrap CI over patients where the "
              "class has enough positives for a macro; the own text's rank among the "
              "vocabulary's texts, the best other text, the class-agnostic abnormality score "
              "and the AUROC within abnormal records beside it):", "",
              "| split | class | name | family | group | positives | AUROC [95% CI] | AP | "
              "own-text rank | best other text | abnormality score | within abnormal | "
              "untrained encoders | nearest trained texts (cosine) | read through the "
              "statements (weight, the statement's own AUROC on these records) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(reports):
        for c in r["classes"]:
            lines.append(f"| {i} | {c['code']} | {c['name']} | {c.get('family', '—')} | "
                         f"{c['group']} | {_class_cells(c)} {_wrong_cells(c)} "
                         f"{num(c.get('within_abnormal_auroc'))} | {_ctrl_range(c)} | "
                         f"{_nearest_text(c)} | {_read_through(c)} |")
    lines += ["", "By family (every unseen (split, class) instance in a macro):", "",
              "| family | instances | mean AUROC | mean wrong-text null | own text p < 0.05 | "
              "own text in the top 5 | mean within abnormal |", "|---|---|---|---|---|---|---|",
              *[f"| {name} | {f['instances']} | {num(f['auroc'])} | {num(f['wrong_null'])} | "
                f"{f['specific']} | {f['top5']} | {num(f['within_abnormal'])} |"
                for name, f in by_family(reports).items()], ""]
    return "\n".join(lines)


def _nearest_text(c):
    near = c.get("nearest_trained") or []
    return "; ".join(f"{n['text']} ({n['cosine']:.2f})" for n in near[:3]) or "—"


def _reading_text(scoring, provenance):
    """How the classes read through the statements were read, where any are."""
    if scoring not in ("findings", "findings-unseen"):
        return ""
    how = {"sentences": "sentence by sentence", "row": "by their whole text rows"}.get(
        provenance.get("statement_reading"))
    return f", classes read through the statements {how}" if how else ""


def _read_through(c):
    read = c.get("read_through") or []
    return "; ".join(f"{r['text']} ({r['weight']:.2f}{_told(r)})" for r in read[:3]) or "—"


def _statements_macro(report):
    """The trained statements' macro AUROC on the report's records, where it was measured."""
    return (report["references"].get("trained_statements_same_records") or {}).get(
        "macro_auroc")


def _told(statement):
    """', AUROC 0.87': how well the statement itself is told on the evaluated records."""
    auroc = statement.get("auroc_here")
    return "" if auroc is None else f", AUROC {auroc:.2f}"


def unseen_instances(reports):
    """Every unseen class in a macro, per split: what the family and recipe tables pool."""
    return [dict(c, split=i) for i, r in enumerate(reports) for c in r["classes"]
            if c["group"] == "unseen" and c["in_macro"]]


def by_family(reports):
    """Per class family (``concepts.FAMILIES``): the unseen instances' mean AUROC, wrong-text
    null mean and within-abnormal AUROC, and how many beat the null (p < 0.05) and rank their
    own text in the top 5 of the vocabulary's texts."""
    out = {}
    for c in unseen_instances(reports):
        out.setdefault(c.get("family", "morphology"), []).append(c)
    def share(cs, holds):
        return f"{sum(bool(c.get('wrong_text') and holds(c['wrong_text'])) for c in cs)} " \
               f"of {len(cs)}"

    return {name: {"instances": len(cs),
                   "auroc": float(np.mean([c["auroc"] for c in cs])),
                   "wrong_null": _mean_of(c["wrong_text"]["mean"] for c in cs
                                          if c.get("wrong_text")),
                   "specific": share(cs, lambda w: w["p"] < 0.05),
                   "top5": share(cs, lambda w: w["rank"] <= 5),
                   "within_abnormal": _mean_of(c.get("within_abnormal_auroc") for c in cs)}
            for name, cs in sorted(out.items())}


def _mean_of(values):
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _mean(values):
    """Mean over splits of the figures that exist, with their count."""
    v = [x for x in values if x is not None]
    return f"{np.mean(v):.3f} ({len(v)} splits)" if v else "n/a"


def _short_verdict(group):
    if group.get("distinguishable_from_nulls") is False:
        return "not above the nulls"
    if group.get("class_specific") is None:
        return "—"
    if not group["class_specific"]:
        return "**not class-specific**"
    return {True: "**zero-shot**: beats all three controls",
            False: "**class-specific**, no zero-shot claim",
            None: "**class-specific**"}[group.get("zero_shot_claim")]


def _wrong_cells(c):
    """The own-text rank | best other text | abnormality score cells of a class row."""
    wrong = c.get("wrong_text")
    if not wrong:
        return "— | — | " + f"{num(c.get('abnormality_auroc'))} |"
    return (f"{wrong['rank']} of {wrong['n_texts']} (p {p_text(wrong['p'])}) | "
            f"{wrong['best']['code']} {num(wrong['best']['auroc'])} | "
            f"{num(c.get('abnormality_auroc'))} |")


def members_text(cfg):
    """'; each run the average of K fits ...' where an experiment averages fits."""
    if cfg.members == 1:
        return ""
    return (f"; each run the average of {cfg.members} fits (seeds {cfg.fit.seed} to "
            f"{cfg.fit.seed + cfg.members - 1}, `ecgshard ensemble`)")


def recipe_text(fc):
    """The training recipe of a fit config, in one sentence."""
    crop = f", random start up to {fc.crop:g} s" if fc.crop else ""
    aug = f"augmentation on (lead dropout {fc.lead_dropout}{crop})" if fc.augment else \
        "no augmentation"
    kinds = f"; trained kinds: {', '.join(fc.train_kinds)}" if fc.train_kinds else ""
    width = f" (width x{fc.width:g})" if fc.width != 1 else ""
    targets = "; **measured findings trained as targets** (`--findings`)" if fc.findings \
        else "; no measured findings"
    if fc.findings and fc.findings_sigmoid:
        targets += f", also each as its own sigmoid (weight {fc.findings_sigmoid:g})"
    return (f"Encoder `{fc.arch}`{width}, loss `{fc.loss}`, {fc.epochs} epochs, batch "
            f"{fc.batch_size}, lr {fc.lr:g} with {fc.warmup:.0%} warm-up then cosine, {aug}"
            f"{kinds}{targets}")


def _by_kind(manifest, report):
    """Macro AUROC per statement kind (PTB-XL: diagnostic, form, rhythm), every group and the
    unseen group alone, over the classes in the macro; nothing for a vocabulary without
    kinds."""
    kinds = {c["code"]: c.get("kind") or () for c in manifest["classes"]}
    if not any(kinds.values()):
        return []
    lines = ["", "Per statement kind (classes in a macro; a statement may be of two kinds):",
             "", "| kind | classes | macro AUROC | unseen classes | unseen macro AUROC |",
             "|---|---|---|---|---|"]
    for kind in sorted({k for ks in kinds.values() for k in ks}):
        rows = [c["auroc"] for c in report["classes"]
                if c["in_macro"] and kind in kinds.get(c["code"], ())]
        unseen = [c["auroc"] for c in report["classes"] if c["in_macro"] and c["group"] ==
                  "unseen" and kind in kinds.get(c["code"], ())]
        lines.append(f"| {kind} | {len(rows)} | {num(np.mean(rows) if rows else None)} | "
                     f"{len(unseen)} | {num(np.mean(unseen) if unseen else None)} |")
    return lines


def _where(path):
    """A data path as the reader of the table can use it: relative to where the command ran."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def _leads_text(provenance):
    leads = provenance.get("leads", list(shards.LEADS))
    return "all 12" if len(leads) == 12 else f"{', '.join(leads)} (the others zeroed)"


def _ctrl_range(c):
    ctrl = c.get("control_auroc")
    return f"{num(ctrl['min'])}–{num(ctrl['max'])}" if ctrl else "—"


def markdown_transfer(cfg, which, trained, manifest, report):
    """Experiment B or C: a model trained on every class of ``trained`` scored on another
    collection (``manifest``), as seen, related and unseen classes."""
    p = report["provenance"]
    g = report["groups"]
    source, what, seen_means = TRAINED[trained]
    published = {"b": {"unseen": PUBLISHED["b_unseen_macro_auroc"],
                       "seen": PUBLISHED["b_seen_macro_auroc"]},
                 "c": {"all": PUBLISHED["c_all_macro_auroc"]}}.get(which, {})
    lines = [
        f"## Experiment {which.upper()}: {source} model scored on "
        f"{SCORED.get(manifest['format'], manifest['format'])}"
        f"{' — ' + cfg.label if cfg.label else ''}",
        "",
        f"Command: `{cfg.command}`",
        "",
        f"Model trained on {what.format(min_count=cfg.min_count)} (folds "
        f"{fold_ranges(cfg.fit.train_folds)}, checkpoint by fold "
        f"{fold_ranges(cfg.fit.val_folds)}{members_text(cfg)}); scored on {p['n_records']} records "
        f"({p['n_patients']} patients) of `{_where(manifest['source_dir'])}` (all folds). "
        f"Text model `{p['text_model']}`. Every class is *seen* ({seen_means}), *related* (a "
        f"parent, child or near-sibling was, or a trained statement names a finding of it) or "
        f"*unseen* (nothing related was), by `ecgshard/data/concept_relations.csv` "
        f"(`docs/relations.md`); `ecgshard "
        f"relations CODE --run RUN` says why. The headline is **unseen**. Macros over classes "
        f"with at least {p['min_positives_for_macro']} positives; 95% intervals resample "
        f"patients. Threshold: {p['threshold_rule']}. Leads scored: {_leads_text(p)}.",
        "",
        *(["Not scored: " + ", ".join(f"{n} {src} records" for src, n in
                                       p["excluded_sources_same_as_training"].items()) +
           " (the training database itself, inside this collection).", ""]
          if p.get("excluded_sources_same_as_training") else []),
        "Controls per group (`docs/zeroshot.md`): the wrong-text null (each class scored with "
        "the other classes' texts; p of the macro against texts reassigned at random), the "
        f"class-agnostic abnormality score ({_baseline_text(p)}) and the AUROC within "
        f"abnormal records; a figure is {CLAIM_RULE}. *Within source*: each class "
        "scored among the records of the sources that carry it, so that a label one database "
        f"alone uses is not scored by telling that database apart. Published figures: "
        f"{NOT_COMPARABLE}.",
        "",
        "| group | classes in macro | macro AUROC [95% CI] | within source | macro AP | macro F1 "
        "| random encoders mean [min, max]; permutation | wrong-text null (p) | abnormality "
        "score (margin) | within abnormal | verdict | published (not comparable) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("unseen", "related", "seen", "all"):
        cited = published.get(name, "—")
        if name not in g:
            lines.append(f"| {name} | 0 | no class of this collection is {name} for this run "
                         f"| | | | | | | | | {cited} |")
        else:
            row = g[name]
            wrong, base = row.get("wrong_text") or {}, row.get("abnormality_baseline") or {}
            lines.append(f"| {name} | {row['n_classes']} | {num(row['macro_auroc'])}"
                         f"{interval(row['macro_auroc_ci'])} | "
                         f"{num(row.get('within_source_macro_auroc'))} | "
                         f"{num(row['macro_ap'])} | "
                         f"{num(row.get('macro_f1'))} | {_control_cell(row)} | "
                         f"{num(wrong.get('null_mean'))} ({p_text(wrong.get('p'))}) | "
                         f"{num(base.get('macro_auroc'))} ({num(base.get('margin'))}) | "
                         f"{num((row.get('within_abnormal') or {}).get('macro_auroc'))} | "
                         f"{_short_verdict(row)} | {cited} |")
    few = {name: row["excluded_few_positives"] for name, row in g.items()
           if name != "all" and row["excluded_few_positives"]}
    if few:
        lines += ["", "Not in a macro (fewer positives than the minimum): " + "; ".join(
            f"{name}: " + _few(codes) for name, codes in few.items()) + "."]
    single = {c["code"]: c["positive_sources"][0] for c in report["classes"]
              if c.get("single_source") and c["in_macro"]}
    if single:
        lines += ["", "Carried by one source only (pooled AUROC partly tells that source from the "
                  "others; within source beside it): " + ", ".join(
                      f"{c['code']} ({single[c['code']]}: {num(c['auroc'])} pooled, "
                      f"{num(c['within_source_auroc'])} within)" for c in report["classes"]
                      if c["code"] in single) + "."]
    lines += _by_kind(manifest, report)
    lines += ["", "Per source database (macro AUROC over the classes with enough positives "
              "there):", "",
              "| source | records | unseen: classes, AUROC | related: classes, AUROC | "
              "seen: classes, AUROC |",
              "|---|---|---|---|---|"]
    for source, e in report["per_source"].items():
        lines.append(f"| {source} | {e['n_records']} | " + " | ".join(
            f"{e[k]['n_classes']}, {num(e[k]['macro_auroc'])}" for k in concepts.GROUPS[::-1])
            + " |")
    lines += ["", "Per class:", "",
              "| code | name | group (via) | positives | AUROC [95% CI] | AP | own-text rank | "
              "best other text | abnormality score | within abnormal | random encoders |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(concepts.GROUPS[::-1])}
    for c in sorted(report["classes"], key=lambda c: (order[c["group"]], -(c["auroc"] or 0))):
        lines.append(f"| {c['code']} | {c['name']} | {c['group']}"
                     f"{' (' + c['via'] + ')' if c['via'] else ''} | {_class_cells(c)} "
                     f"{_wrong_cells(c)} {num(c.get('within_abnormal_auroc'))} | "
                     f"{_ctrl_range(c)} |")
    lines.append("")
    return "\n".join(lines)


def _baseline_text(provenance):
    """How the abnormality baseline was formed, from a report's provenance."""
    code, names = provenance.get("normal_text"), provenance.get("abnormality_baselines")
    if names is None:                      # a report from before the mean over the texts
        return "none here: the run trained no normal text to take the cosine to" \
            if code is None else f"minus the cosine to the `{code}` text"
    if not names:
        return "none here: no normal text trained and no wrong-text candidate"
    said = [_baseline_name(n, code) for n in names]
    return said[0] if len(said) == 1 else \
        f"per class the stronger of {' and '.join(said)}, chosen on the evaluated labels"


def _baseline_name(name, code=None):
    if name == "minus_normal_text" and code:
        return f"minus the cosine to the `{code}` text"
    return BASELINES.get(name, name)


def _chosen_text(base):
    """Which candidate each class was held to: '<candidate> for 3, <candidate> for 1'."""
    chosen = {n: k for n, k in (base.get("chosen") or {}).items() if k}
    if not chosen:                         # a report from before the mean over the texts
        return _baseline_name("minus_normal_text", base.get("text"))
    return ", ".join(f"{BASELINES.get(n, n)} for {k}" for n, k in chosen.items())


def _candidates_text(base):
    """Each candidate's macro: '; <candidate> 0.717, <candidate> 0.796' ('' without)."""
    said = ", ".join(f"{BASELINES.get(n, n)} {num(v)}"
                     for n, v in (base.get("candidates_macro_auroc") or {}).items())
    return f"; {said}" if said else ""
