"""The thesis experiments as one command each, from raw record directories to a markdown table.

Experiment A: PTB-XL only. Several holdout splits (the package's default holdout, then random
ones drawn from classes with positives in the test fold, each expanded to its related-class
group); for each: fit without the held-out classes and their records, score them zero-shot on
the test fold. Reported as mean ± std over splits, with per-class AUROC, since one held-out
class can sit below 0.5 while the mean looks fine.

Experiment B: fit on PTB-XL (no holdout), score every class of the Challenge 2021 databases
zero-shot, split into seen and unseen concepts, per source database.

Each stage is resumable (build verifies shards, embed-text is cached, fit resumes), so a rerun
after an interruption continues. Results go between markers in ``docs/results.md`` so that A and
B sections coexist and a rerun replaces its own section only.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import build, fit, labels, text, zeroshot
from . import shards as S
from .errors import ECGShardError

log = logging.getLogger(__name__)

# The published PTB-XL-only version of this design (frozen Bio_ClinicalBERT CLS embeddings,
# trained projection, CLIP loss, 128 Hz), for comparison beside our numbers.
PUBLISHED = {"a_heldout_macro_auroc": 0.59, "a_trained_macro_auroc": 0.70,
             "supervised_xresnet1d101": 0.93, "b_unseen_macro_auroc": "0.57-0.61",
             "b_seen_macro_auroc": "0.70-0.74"}


@dataclass(frozen=True)
class ExperimentConfig:
    work: str
    ptbxl: str
    cinc: str | None = None
    text_model: str = text.DEFAULT_MODEL
    pooling: str = "mean"
    texts: str = "name"                 # name | description | both (see docs/text.md)
    templates: tuple = ("{name}",)
    splits: int = 3
    holdout_size: int = 4              # classes drawn per random split (before expansion)
    min_test_positives: int = 5
    epochs: int = 30
    batch_size: int = 128
    arch: str = "resnet1d"
    loss: str = "clip"
    device: str = "auto"
    bootstrap: int = 1000
    build_workers: int = 0
    min_positives: int = 5
    seed: int = 0
    results: str = "docs/results.md"
    label: str = ""                     # what the data is, for the table's heading
    fit_extra: dict = field(default_factory=dict)


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
    variant = "" if cfg.texts == "name" and tuple(cfg.templates) == ("{name}",) else \
        "-" + S.fingerprint([cfg.texts, list(cfg.templates)])[:8]
    text_file = work / "text" / f"{_slug(cfg.text_model)}-{cfg.pooling}{variant}.h5"
    text.run(text.TextConfig(vocab=tuple(str(work / "shards" / n) for n in sets),
                             out=str(text_file), model=cfg.text_model, pooling=cfg.pooling,
                             texts=cfg.texts, templates=tuple(cfg.templates),
                             device=cfg.device))
    return work, text_file, variant


def _fit(cfg, shards, text_file, out, holdout):
    fc = fit.FitConfig(shards=str(shards), text=str(text_file), out=str(out),
                       holdout=tuple(holdout), holdout_expand=True, arch=cfg.arch, loss=cfg.loss,
                       epochs=cfg.epochs, batch_size=cfg.batch_size, device=cfg.device,
                       min_positives=cfg.min_positives, seed=cfg.seed,
                       resume=(Path(out) / "checkpoint-last.pt").exists(), **cfg.fit_extra)
    summary_file = Path(out) / "summary.json"
    if summary_file.exists():
        done = json.loads(summary_file.read_text())
        if done.get("epochs_done") == cfg.epochs:
            return done
    return fit.run(fc)


def holdout_splits(shard_dir, manifest, n_splits, size, min_test_pos, seed, test_folds=(10,)):
    """The default holdout first, then random draws of ``size`` classes with at least
    ``min_test_pos`` positives in the test folds; each expanded to its related-class group."""
    import h5py

    classes = manifest["classes"]
    codes = S.class_codes(manifest)
    test_pos = np.zeros(len(codes), np.int64)
    for entry in manifest["shards"]:
        if not {str(f) for f in test_folds} & set(entry["folds"]):
            continue
        with h5py.File(Path(shard_dir) / entry["file"], "r") as f:
            in_test = np.isin(f[S.FOLD][...], test_folds)
            test_pos += f[S.LABELS][...][in_test].sum(axis=0, dtype=np.int64)
    eligible = [c for c, n in zip(codes, test_pos) if n >= min_test_pos]
    splits = []
    default = [c for c in labels.DEFAULT_PTBXL_HOLDOUT if c in eligible]
    if default:
        splits.append(labels.resolve_holdout(default, classes, expand=True))
    rng = np.random.default_rng(seed)
    tries = 0
    while len(splits) < n_splits and tries < 100:
        tries += 1
        pick = sorted(str(c) for c in rng.choice(eligible, size=min(size, len(eligible)),
                                                 replace=False))
        full = labels.resolve_holdout(list(pick), classes, expand=True)
        # Keep most of the label space for training: at most a third of the eligible classes.
        if full not in splits and len(full) <= max(size, len(eligible) // 3):
            splits.append(full)
    if not splits:
        raise ECGShardError(f"no class has {min_test_pos} positives in test folds {test_folds}")
    return splits


def run_a(cfg: ExperimentConfig):
    work, text_file, variant = _prepare(cfg, with_cinc=False)
    shards = work / "shards" / "ptbxl"
    manifest = S.load_manifest(shards)
    splits = holdout_splits(shards, manifest, cfg.splits, cfg.holdout_size, cfg.min_test_positives,
                            cfg.seed)
    reports = []
    for i, holdout in enumerate(splits):
        run_dir = work / "runs" / f"a-split{i}{variant}"
        _fit(cfg, shards, text_file, run_dir, holdout)
        reports.append(zeroshot.run(zeroshot.ZeroShotConfig(
            run=str(run_dir), shards=str(shards), text=str(text_file),
            out=str(work / "reports" / f"a-split{i}{variant}"), bootstrap=cfg.bootstrap,
            device=cfg.device, seed=cfg.seed)))
    section = markdown_a(cfg, manifest, splits, reports)
    write_section(cfg.results, _key("experiment-a", cfg), section)
    return {"splits": splits, "reports": [str(work / "reports" / f"a-split{i}{variant}")
                                          for i in range(len(splits))], "markdown": section}


def run_b(cfg: ExperimentConfig):
    work, text_file, variant = _prepare(cfg, with_cinc=True)
    run_dir = work / "runs" / f"b-all-ptbxl{variant}"
    _fit(cfg, work / "shards" / "ptbxl", text_file, run_dir, ())
    report = zeroshot.run(zeroshot.ZeroShotConfig(
        run=str(run_dir), shards=str(work / "shards" / "cinc2021"), text=str(text_file),
        out=str(work / "reports" / f"b-cinc2021{variant}"), classes="all",
        bootstrap=cfg.bootstrap,
        device=cfg.device, seed=cfg.seed))
    cinc_manifest = S.load_manifest(work / "shards" / "cinc2021")
    section = markdown_b(cfg, cinc_manifest, report)
    write_section(cfg.results, _key("experiment-b", cfg), section)
    return {"report": str(work / "reports" / f"b-cinc2021{variant}"), "markdown": section}


# ---------------------------------------------------------------- markdown

def _command():
    # The bin/ runners pass the command the user typed; otherwise the ecgshard command line.
    import os

    typed = os.environ.get("ECGSHARD_COMMAND")
    return typed or "ecgshard " + " ".join(shlex.quote(a) for a in sys.argv[1:])


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


def markdown_a(cfg, manifest, splits, reports):
    p0 = reports[0]["provenance"]
    unseen = [r["groups"].get("unseen", {}).get("macro_auroc") for r in reports]
    unseen_ap = [r["groups"].get("unseen", {}).get("macro_ap") for r in reports]
    trained = [r["references"].get("trained_classes_same_folds", {}).get("macro_auroc")
               for r in reports]
    control = [r["references"].get("random_encoder_control", {}).get("macro_auroc")
               for r in reports]
    val = [r["provenance"].get("checkpoint_val_macro_auroc") for r in reports]
    lines = [
        f"## Experiment A: held-out PTB-XL classes{' — ' + cfg.label if cfg.label else ''}",
        "",
        f"Command: `{_command()}`",
        "",
        f"Data: {manifest['n_records']} records from `{manifest['source_dir']}` "
        f"({manifest['fs']} Hz, {manifest['n_skipped']} skipped). Text model: "
        f"`{p0['text_model']}` ({p0['text_pooling']}; texts: {cfg.texts}, templates "
        f"{list(cfg.templates)}). Encoder `{cfg.arch}`, loss `{cfg.loss}`, "
        f"{cfg.epochs} epochs. Train folds 1-8, validation fold 9 (checkpoint choice and "
        f"threshold), test fold {p0['folds']}. Strict zero-shot: every record carrying a "
        f"held-out label is excluded from training and validation.",
        "",
        "| figure (test fold) | ours, mean ± std over splits | published (PTB-XL only, "
        "Bio_ClinicalBERT) |",
        "|---|---|---|",
        f"| held-out classes, macro AUROC | {_ms(unseen)} | "
        f"{PUBLISHED['a_heldout_macro_auroc']} |",
        f"| held-out classes, macro AP | {_ms(unseen_ap)} | — |",
        f"| trained classes, macro AUROC | {_ms(trained)} | "
        f"{PUBLISHED['a_trained_macro_auroc']} (supervised xresnet1d101: "
        f"{PUBLISHED['supervised_xresnet1d101']}) |",
        f"| random-encoder control, held-out macro AUROC | {_ms(control)} | — |",
        f"| validation macro AUROC, trained classes (fold 9) | {_ms(val)} | — |",
        "",
        "Per split and per held-out class (AUROC with 95% bootstrap CI over test records):",
        "",
        "| split | held out | class | name | positives | AUROC [95% CI] | AP |",
        "|---|---|---|---|---|---|---|"]
    for i, (holdout, r) in enumerate(zip(splits, reports)):
        for c in r["classes"]:
            lines.append(f"| {i} | {', '.join(holdout)} | {c['code']} | {c['name']} | "
                         f"{_class_cells(c)}")
    lines.append("")
    return "\n".join(lines)


def markdown_b(cfg, manifest, report):
    p = report["provenance"]
    g = report["groups"]
    lines = [
        f"## Experiment B: PTB-XL model scored on Challenge 2021 databases"
        f"{' — ' + cfg.label if cfg.label else ''}",
        "",
        f"Command: `{_command()}`",
        "",
        f"Model trained on all PTB-XL classes (folds 1-8, checkpoint by fold 9); scored on "
        f"{p['n_records']} records of `{manifest['source_dir']}` (all folds). Text model "
        f"`{p['text_model']}`. A class is *seen* when its concept was a PTB-XL training class "
        f"(`ecgshard.labels.seen_status`), else *unseen*. Threshold: {p['threshold_rule']}.",
        "",
        *(["Not scored: " + ", ".join(f"{n} {src} records" for src, n in
                                       p["excluded_sources_same_as_training"].items()) +
           " (the training database itself, inside this collection).", ""]
          if p.get("excluded_sources_same_as_training") else []),
        "| group | classes | macro AUROC [95% CI] | macro AP | macro F1 | published |",
        "|---|---|---|---|---|---|"]
    for name, published in (("unseen", PUBLISHED["b_unseen_macro_auroc"]),
                            ("seen", PUBLISHED["b_seen_macro_auroc"]), ("all", "—")):
        if name in g:
            row = g[name]
            lines.append(f"| {name} | {row['n_classes']} | {_f(row['macro_auroc'])}"
                         f"{_ci(row['macro_auroc_ci'])} | {_f(row['macro_ap'])} | "
                         f"{_f(row['macro_f1'])} | {published} |")
    ctrl = report["references"].get("random_encoder_control", {}).get("macro_auroc")
    lines += [f"| random-encoder control (all) | | {_f(ctrl)} | | | |", "",
              "Per source database (macro AUROC over the classes with positives there):", "",
              "| source | records | seen: classes, AUROC | unseen: classes, AUROC |",
              "|---|---|---|---|"]
    for source, e in report["per_source"].items():
        lines.append(f"| {source} | {e['n_records']} | {e['seen']['n_classes']}, "
                     f"{_f(e['seen']['macro_auroc'])} | {e['unseen']['n_classes']}, "
                     f"{_f(e['unseen']['macro_auroc'])} |")
    lines += ["", "Per class:", "",
              "| code | name | group (as) | positives | AUROC [95% CI] | AP |",
              "|---|---|---|---|---|---|"]
    for c in sorted(report["classes"], key=lambda c: (c["group"], -(c["auroc"] or 0))):
        lines.append(f"| {c['code']} | {c['name']} | {c['group']}"
                     f"{' (' + c['seen_as'] + ')' if c['seen_as'] else ''} | {_class_cells(c)}")
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
    with S.atomic_path(path) as tmp:
        tmp.write_text(new)


def _key(name, cfg):
    label = "".join(ch if ch.isalnum() else "-" for ch in cfg.label.lower())[:60].strip("-")
    return f"{name}-{label}" if label else name


def _slug(model):
    return "".join(ch if ch.isalnum() else "-" for ch in str(model)).strip("-")[-48:]
