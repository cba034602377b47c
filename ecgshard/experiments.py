"""The thesis experiments as one command each, from raw record directories to a markdown table.

Experiment A: PTB-XL only. Several holdout splits (the package's default holdout, then random
ones drawn from classes with enough positives in the validation folds, each closed over its
related classes, and kept only if it leaves most of the training records); for each: fit
without the held-out classes and their records, score them zero-shot on the test fold. The test
fold never chooses what is held out. Reported as mean ± std over splits, with per-class AUROC
and the random-encoder and permutation nulls, since one held-out class can sit below 0.5 while
the mean looks fine.

Experiment B: fit on PTB-XL (no holdout), score every class of the Challenge 2021 databases
zero-shot, as seen, related and unseen concepts (``ecgshard.concepts``), per source database.

Each stage is resumable (build verifies shards, embed-text is cached, fit resumes). A run is
reused only when its whole fit configuration, shard fingerprint and text matrix match: its
directory is named by their fingerprint, so other settings train a new run. Results go between
markers in ``docs/results.md`` so that A and B sections coexist and a rerun replaces its own
section only.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import build, concepts, fit, labels, text, zeroshot
from . import shards
from .config import ExperimentConfig
from .errors import ECGShardError

log = logging.getLogger(__name__)

# The published PTB-XL-only version of this design (frozen Bio_ClinicalBERT CLS embeddings,
# trained projection, CLIP loss, 128 Hz), for comparison beside our numbers.
PUBLISHED = {"a_heldout_macro_auroc": 0.59, "a_trained_macro_auroc": 0.70,
             "supervised_xresnet1d101": 0.93, "b_unseen_macro_auroc": "0.57-0.61",
             "b_seen_macro_auroc": "0.70-0.74"}


def _prepare(cfg, with_cinc):
    work = Path(cfg.work)
    sets = {"ptbxl": (cfg.ptbxl, "ptbxl")}
    if with_cinc:
        if not cfg.cinc:
            raise ECGShardError("experiment b needs --cinc (a Challenge 2021 directory)")
        sets["cinc2021"] = (cfg.cinc, "cinc2021")
    for name, (src, fmt) in sets.items():
        build.run(build.BuildConfig(source_dir=src, out_dir=str(work / "shards" / name),
                                    format=fmt, workers=cfg.build_workers))
    t = cfg.text
    variant = "" if t.texts == "name" and tuple(t.templates) == ("{name}",) else \
        "-" + shards.fingerprint([t.texts, list(t.templates)])[:8]
    text_file = work / "text" / f"{_slug(t.model)}-{t.pooling}{variant}.h5"
    text.run(replace(t, vocab=tuple(str(work / "shards" / n) for n in sets), out=str(text_file)))
    return work, text_file, variant


def _fit(cfg, shard_dir, text_file, runs, name, holdout):
    """Train (or reuse) the run of ``name`` for these settings; returns its directory.

    The directory name carries a fingerprint of the whole fit configuration, the shards and
    the text matrix, so a run is reused (or resumed) only for exactly these; anything else
    trains anew beside it."""
    fc = replace(cfg.fit, shards=str(shard_dir), text=str(text_file), holdout=tuple(holdout),
                 holdout_expand=True)
    key = run_key(fc)
    out = Path(runs) / f"{name}-{shards.fingerprint(key)[:10]}"
    summary_file = out / "summary.json"
    if summary_file.exists():
        done = json.loads(summary_file.read_text())
        differs = [k for k in key if done.get("key", {}).get(k) != key[k]]
        if differs:
            raise ECGShardError(f"{out} holds a run of other settings ({', '.join(differs)} "
                                f"differ); remove it or choose another --work")
        if done.get("epochs_done") == fc.epochs:
            return out
    summary = fit.run(replace(fc, out=str(out), resume=(out / "checkpoint-last.pt").exists()))
    shards.write_json(summary_file, dict(summary, key=key))
    return out


def run_key(fc):
    """What makes two runs the same: the fit config (but where it is written and whether it
    resumed), the shards' fingerprint, the text matrix's content hash and the checkpoint
    format (a run this ecgshard cannot load is no run to reuse)."""
    config = {k: v for k, v in asdict(fc).items() if k not in ("out", "resume")}
    return {"config": json.loads(json.dumps(config)),
            "checkpoint_schema": shards.CHECKPOINT_SCHEMA_VERSION,
            "shards_fingerprint": shards.load_manifest(fc.shards)["fingerprint"],
            "text_sha256": shards.read_text_matrix(fc.text).sha256}


def holdout_splits(cfg, shard_dir, manifest):
    """The default holdout first, then random draws of ``holdout_size`` classes; each closed
    over its related classes.

    Only the training and validation folds decide: a class is drawn with at least
    ``min_val_positives`` positives in the validation folds, and a random split is kept only if
    the records it excludes are at most ``max_excluded`` of the training folds. The test fold
    is never read here.
    """
    from .data import Selection, count_selection

    classes = manifest["classes"]
    codes = tuple(shards.class_codes(manifest))
    folds = cfg.fit
    n_train, _, train_pos = count_selection(Selection(str(shard_dir), tuple(folds.train_folds),
                                                      codes))
    _, _, val_pos = count_selection(Selection(str(shard_dir), tuple(folds.val_folds), codes))
    trainable = [c for c, n in zip(codes, train_pos) if n >= cfg.fit.min_positives]

    def excluded_share(holdout):
        _, dropped, _ = count_selection(Selection(str(shard_dir), tuple(folds.train_folds), codes,
                                                  tuple(holdout)))
        return dropped / max(1, n_train)

    eligible = [c for c, n, t in zip(codes, val_pos, train_pos)
                if n >= cfg.min_val_positives and t / max(1, n_train) <= cfg.max_excluded]
    splits = []
    default = [c for c in labels.DEFAULT_PTBXL_HOLDOUT if c in codes]
    if default:
        # The package's default is always reported (it is what `fit --holdout default` does);
        # the table states the share of training records each split excluded.
        splits.append(labels.resolve_holdout(default, classes, expand=True, trainable=trainable))
    rng = np.random.default_rng(cfg.fit.seed)
    tries = 0
    while len(splits) < cfg.splits and tries < 200 and eligible:
        tries += 1
        pick = sorted(str(c) for c in rng.choice(eligible, size=min(cfg.holdout_size,
                                                                    len(eligible)),
                                                 replace=False))
        full = labels.resolve_holdout(list(pick), classes, expand=True, trainable=trainable)
        if full not in splits and excluded_share(full) <= cfg.max_excluded:
            splits.append(full)
    if not splits:
        raise ECGShardError(f"no holdout split found: no class has {cfg.min_val_positives} "
                            f"positives in validation folds {folds.val_folds} while excluding at "
                            f"most {cfg.max_excluded:.0%} of the training records")
    return splits


def _zeroshot(cfg, run_dir, shard_dir, text_file, out, **kw):
    return zeroshot.run(replace(cfg.zeroshot, run=str(run_dir), shards=str(shard_dir),
                                text=str(text_file), out=str(out), **kw))


def run_a(cfg: ExperimentConfig):
    work, text_file, variant = _prepare(cfg, with_cinc=False)
    shard_dir = work / "shards" / "ptbxl"
    manifest = shards.load_manifest(shard_dir)
    splits = holdout_splits(cfg, shard_dir, manifest)
    reports, outs = [], []
    for i, holdout in enumerate(splits):
        run_dir = _fit(cfg, shard_dir, text_file, work / "runs", f"a-split{i}{variant}", holdout)
        outs.append(work / "reports" / run_dir.name)
        reports.append(_zeroshot(cfg, run_dir, shard_dir, text_file, outs[-1]))
        counts = json.loads((run_dir / "classes.json").read_text())
        dropped = counts["records_excluded_for_heldout_labels"]["train"]
        reports[-1]["excluded_train_share"] = dropped / max(1, dropped +
                                                            counts["records"]["train"])
    section = markdown_a(cfg, manifest, reports)
    write_section(cfg.results, _key("experiment-a", cfg), section)
    return {"splits": [r["provenance"]["holdout"] for r in reports],
            "reports": [str(o) for o in outs], "markdown": section}


def run_b(cfg: ExperimentConfig):
    work, text_file, variant = _prepare(cfg, with_cinc=True)
    run_dir = _fit(cfg, work / "shards" / "ptbxl", text_file, work / "runs",
                   f"b-all-ptbxl{variant}", ())
    out = work / "reports" / f"b-cinc2021-{run_dir.name}"
    report = _zeroshot(cfg, run_dir, work / "shards" / "cinc2021", text_file, out,
                       classes="all")
    cinc_manifest = shards.load_manifest(work / "shards" / "cinc2021")
    section = markdown_b(cfg, cinc_manifest, report)
    write_section(cfg.results, _key("experiment-b", cfg), section)
    return {"report": str(out), "markdown": section}


# ---------------------------------------------------------------- markdown

def _f(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else \
        f"{x:.{digits}f}"


def _ci(ci):
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _class_cells(c):
    """The positives | AUROC [CI] | AP cells every per-class table ends with."""
    return f"{c['n_pos']} | {_f(c['auroc'])}{_ci(c['auroc_ci'])} | {_f(c['ap'])} |"


def _ms(values):
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _control_cell(group):
    """'0.512 [0.44, 0.58] (10 seeds); perm p 0.001; above both' for a group's macro."""
    ctrl, perm = group.get("control"), group.get("permutation")
    parts = []
    if ctrl:
        parts.append(f"{_f(ctrl['mean'])} [{_f(ctrl['min'])}, {_f(ctrl['max'])}]")
    if perm and perm.get("p") is not None:
        parts.append(f"perm p {perm['p']:.3f}")
    if "distinguishable_from_nulls" in group:
        parts.append("**above both nulls**" if group["distinguishable_from_nulls"] else
                     "**not distinguishable from the nulls**")
    return "; ".join(parts) or "—"


def _folds_text(folds):
    return zeroshot._fold_ranges(list(folds))


def markdown_a(cfg, manifest, reports):
    p0 = reports[0]["provenance"]
    groups = [r["groups"].get("unseen", {}) for r in reports]
    unseen = [g.get("macro_auroc") for g in groups]
    unseen_ap = [g.get("macro_ap") for g in groups]
    trained = [r["references"].get("trained_classes_same_folds", {}).get("macro_auroc")
               for r in reports]
    control = [v for g in groups for v in (g.get("control") or {}).get("values", [])]
    above = sum(bool(g.get("distinguishable_from_nulls")) for g in groups)
    val = [r["provenance"].get("checkpoint_val_macro_auroc") for r in reports]
    not_unseen = [c["code"] for r in reports for c in r["classes"] if c["group"] != "unseen"]
    lines = [
        f"## Experiment A: held-out PTB-XL classes{' — ' + cfg.label if cfg.label else ''}",
        "",
        f"Command: `{cfg.command}`",
        "",
        f"Data: {manifest['n_records']} records from `{_where(manifest['source_dir'])}` "
        f"({manifest['fs']} Hz, {manifest['n_skipped']} skipped). Text model: "
        f"`{p0['text_model']}` ({p0['text_pooling']}; texts: {cfg.text.texts}, templates "
        f"{list(cfg.text.templates)}). Encoder `{cfg.fit.arch}`, loss `{cfg.fit.loss}`, "
        f"{cfg.fit.epochs} epochs. Train folds {_folds_text(cfg.fit.train_folds)}, validation "
        f"fold {_folds_text(cfg.fit.val_folds)} (checkpoint, threshold, and which classes may be "
        f"held "
        f"out: at least {cfg.min_val_positives} validation positives; random splits exclude at "
        f"most {cfg.max_excluded:.0%} of the training records), test fold "
        f"{_folds_text(p0['folds'])} (reporting only). Each holdout is closed over "
        f"`ecgshard/data/concept_relations.csv` (synonyms, parents, children, near-siblings), "
        f"and every record carrying a held-out statement at any likelihood is excluded from "
        f"training and validation; every held-out class is therefore *unseen*"
        f"{'' if not not_unseen else ' except ' + ', '.join(sorted(set(not_unseen)))}.",
        "",
        f"Macros are over held-out classes with at least {cfg.zeroshot.min_positives} test "
        f"positives (the others are listed per split); 95% intervals resample patients with the "
        f"class set fixed. Nulls: {cfg.zeroshot.control_seeds} untrained encoders per split (same "
        f"pipeline, other seeds) and {p0['permutations']} label permutations.",
        "",
        "| figure (test fold) | ours, mean ± std over splits | published (PTB-XL only, "
        "Bio_ClinicalBERT) |",
        "|---|---|---|",
        f"| unseen (held-out) classes, macro AUROC | {_ms(unseen)} | "
        f"{PUBLISHED['a_heldout_macro_auroc']} |",
        f"| unseen (held-out) classes, macro AP | {_ms(unseen_ap)} | — |",
        f"| random-encoder distribution, same classes ({len(control)} encoders) | "
        + (f"{_ms(control)} (range {_f(min(control))}–{_f(max(control))})" if control else
           f"n/a: no held-out class has {cfg.zeroshot.min_positives} test positives") + " | — |",
        f"| splits whose unseen macro is above both nulls | {above} of {len(reports)} | — |",
        f"| trained classes, macro AUROC | {_ms(trained)} | "
        f"{PUBLISHED['a_trained_macro_auroc']} (supervised xresnet1d101: "
        f"{PUBLISHED['supervised_xresnet1d101']}) |",
        f"| validation macro AUROC, trained classes | {_ms(val)} | — |",
        "",
        "Per split: the holdout the run used (after closure), the unseen macro and where it "
        "falls in the nulls:",
        "",
        "| split | held out (closed) | training records excluded | unseen classes in macro | "
        "macro AUROC [95% CI] | random encoders mean [min, max]; permutation; verdict | "
        "not in macro (positives) |",
        "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(reports):
        g = r["groups"].get("unseen", {})
        few = ", ".join(f"{c} ({n})" for c, n in g.get("excluded_few_positives", {}).items())
        lines.append(f"| {i} | {', '.join(r['provenance']['holdout'])} | "
                     f"{r.get('excluded_train_share', 0):.0%} | {g.get('n_classes', 0)} "
                     f"| {_f(g.get('macro_auroc'))}{_ci(g.get('macro_auroc_ci'))} | "
                     f"{_control_cell(g)} | {few or '—'} |")
    lines += ["", "Per held-out class (AUROC with 95% bootstrap CI over patients; the range of "
              "the untrained encoders beside it):", "",
              "| split | class | name | group | positives | AUROC [95% CI] | AP | "
              "random encoders |",
              "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(reports):
        for c in r["classes"]:
            lines.append(f"| {i} | {c['code']} | {c['name']} | {c['group']} | "
                         f"{_class_cells(c)} {_ctrl_range(c)} |")
    lines.append("")
    return "\n".join(lines)


def _where(path):
    """A data path as the reader of the table can use it: relative to where the command ran."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def _ctrl_range(c):
    ctrl = c.get("control_auroc")
    return f"{_f(ctrl['min'])}–{_f(ctrl['max'])}" if ctrl else "—"


def markdown_b(cfg, manifest, report):
    p = report["provenance"]
    g = report["groups"]
    lines = [
        f"## Experiment B: PTB-XL model scored on Challenge 2021 databases"
        f"{' — ' + cfg.label if cfg.label else ''}",
        "",
        f"Command: `{cfg.command}`",
        "",
        f"Model trained on all PTB-XL classes (folds {_folds_text(cfg.fit.train_folds)}, "
        f"checkpoint by fold {_folds_text(cfg.fit.val_folds)}); scored on {p['n_records']} records "
        f"({p['n_patients']} patients) of `{_where(manifest['source_dir'])}` (all folds). "
        f"Text model `{p['text_model']}`. Every class is *seen* (a code of its concept was a "
        f"PTB-XL training class), *related* (a parent, child or near-sibling was) or *unseen* "
        f"(nothing related was), by `ecgshard/data/concept_relations.csv`; `ecgshard "
        f"relations CODE --run RUN` says why. The headline is **unseen**. Macros over classes "
        f"with at least {p['min_positives_for_macro']} positives; 95% intervals resample "
        f"patients. Threshold: {p['threshold_rule']}.",
        "",
        *(["Not scored: " + ", ".join(f"{n} {src} records" for src, n in
                                       p["excluded_sources_same_as_training"].items()) +
           " (the training database itself, inside this collection).", ""]
          if p.get("excluded_sources_same_as_training") else []),
        "| group | classes in macro | macro AUROC [95% CI] | macro AP | macro F1 | random "
        "encoders mean [min, max]; permutation; verdict | published |",
        "|---|---|---|---|---|---|---|"]
    for name, published in (("unseen", PUBLISHED["b_unseen_macro_auroc"]), ("related", "—"),
                            ("seen", PUBLISHED["b_seen_macro_auroc"]), ("all", "—")):
        if name not in g:
            lines.append(f"| {name} | 0 | no class of this collection is {name} for this run "
                         f"| | | | {published} |")
        else:
            row = g[name]
            lines.append(f"| {name} | {row['n_classes']} | {_f(row['macro_auroc'])}"
                         f"{_ci(row['macro_auroc_ci'])} | {_f(row['macro_ap'])} | "
                         f"{_f(row.get('macro_f1'))} | {_control_cell(row)} | {published} |")
    few = {name: row["excluded_few_positives"] for name, row in g.items()
           if name != "all" and row["excluded_few_positives"]}
    if few:
        lines += ["", "Not in a macro (fewer positives than the minimum): " + "; ".join(
            f"{name}: " + ", ".join(f"{c} ({n})" for c, n in codes.items())
            for name, codes in few.items()) + "."]
    lines += ["", "Per source database (macro AUROC over the classes with enough positives "
              "there):", "",
              "| source | records | unseen: classes, AUROC | related: classes, AUROC | "
              "seen: classes, AUROC |",
              "|---|---|---|---|---|"]
    for source, e in report["per_source"].items():
        lines.append(f"| {source} | {e['n_records']} | " + " | ".join(
            f"{e[k]['n_classes']}, {_f(e[k]['macro_auroc'])}" for k in concepts.GROUPS[::-1])
            + " |")
    lines += ["", "Per class:", "",
              "| code | name | group (via) | positives | AUROC [95% CI] | AP | random encoders |",
              "|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(concepts.GROUPS[::-1])}
    for c in sorted(report["classes"], key=lambda c: (order[c["group"]], -(c["auroc"] or 0))):
        lines.append(f"| {c['code']} | {c['name']} | {c['group']}"
                     f"{' (' + c['via'] + ')' if c['via'] else ''} | {_class_cells(c)} "
                     f"{_ctrl_range(c)} |")
    lines.append("")
    return "\n".join(lines)


def write_section(path, key, body):
    """Replace (or append) the ``key`` section of a markdown file, atomically."""
    path = Path(path)
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    old = path.read_text() if path.exists() else "# Results\n\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with shards.atomic_path(path) as tmp:
        tmp.write_text(new)


def _key(name, cfg):
    label = "".join(ch if ch.isalnum() else "-" for ch in cfg.label.lower())[:60].strip("-")
    return f"{name}-{label}" if label else name


def _slug(model):
    return "".join(ch if ch.isalnum() else "-" for ch in str(model)).strip("-")[-48:]
