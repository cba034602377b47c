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

Experiment C: fit on MIMIC-IV-ECG's machine statements (no holdout), score every class of
PTB-XL (by statement kind too) and, given one, of the Challenge 2021 databases — the protocol
of the published ECG-text models, with the same three groups, so that what a statement-trained
model has in fact seen is told apart from what it has not.

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

from . import build, concepts, ensemble, fit, metrics, report, text, zeroshot
from . import controls as specificity
from . import shards
from .config import EnsembleConfig, ExperimentConfig, ZeroShotConfig, default
from .data import Selection, count_selection
from .run import checkpoint_path
from .errors import ECGShardError

log = logging.getLogger(__name__)

# name under WORK/shards -> (ExperimentConfig field with its directory, build format, option)
SETS = {"ptbxl": ("ptbxl", "ptbxl", "--ptbxl"), "cinc2021": ("cinc", "cinc2021", "--cinc"),
        "mimic": ("mimic", "mimic-iv-ecg", "--mimic")}


def _prepare(cfg, which, names):
    """Build the named shard sets (one signal path: every build's defaults) and embed all
    their classes into one text matrix; returns the work directory, the text file and the
    text variant's run-name suffix."""
    work = Path(cfg.work)
    for name in names:
        field, fmt, option = SETS[name]
        if not getattr(cfg, field):
            raise ECGShardError(f"experiment {which} needs {option} (its {name} directory)")
        # only a statement vocabulary has a count cut (kept out of the others' build keys)
        extra = {"min_count": cfg.min_count} if fmt == "mimic-iv-ecg" else {}
        build.run(build.BuildConfig(source_dir=getattr(cfg, field),
                                    out_dir=str(work / "shards" / name), format=fmt,
                                    workers=cfg.build_workers, **extra))
    t = cfg.text
    variant = "" if t.texts == "name" and tuple(t.templates) == ("{name}",) else \
        "-" + shards.fingerprint([t.texts, list(t.templates)])[:8]
    model, pooling = text.resolve_model(t.model, t.pooling)
    text_file = work / "text" / f"{_slug(model)}-{pooling}{variant}.h5"
    text.run(replace(t, vocab=tuple(str(work / "shards" / n) for n in names),
                     out=str(text_file)))
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
    if not (out / "summary.json").exists():
        # a run keyed by where its working directory was (as runs were before 2026-12-04)
        out = next((d for d in sorted(Path(runs).glob(f"{name}-*"))
                    if _keyed_as(d / "summary.json", key)), out)
    summary_file = out / "summary.json"
    if summary_file.exists():
        done = json.loads(summary_file.read_text())
        differs = [k for k in key if _without_paths(done.get("key", {})).get(k) != key[k]]
        if differs:
            raise ECGShardError(f"{out} holds a run of other settings ({', '.join(differs)} "
                                f"differ); remove it or choose another --work")
        if done.get("epochs_done") == fc.epochs:
            return out
    summary = fit.run(replace(fc, out=str(out), resume=checkpoint_path(out, "last").exists()))
    shards.write_json(summary_file, dict(summary, key=key))
    return out


def _fitted(cfg, shard_dir, text_file, runs, name, holdout):
    """The run to score: the fit of ``name``, or with ``--members K`` K fits of it (seeds
    ``--seed`` to ``--seed`` + K - 1) averaged into one run (``ecgshard.ensemble``)."""
    dirs = [_fit(replace(cfg, fit=replace(cfg.fit, seed=cfg.fit.seed + k)), shard_dir,
                 text_file, runs, name, holdout) for k in range(cfg.members)]
    if cfg.members == 1:
        return dirs[0]
    # the members follow from the first's settings and seed, so its name names them all
    out = dirs[0].with_name(f"{dirs[0].name}-x{cfg.members}")
    return ensemble.run(EnsembleConfig(runs=tuple(map(str, dirs)), out=str(out)))


def run_key(fc):
    """What makes two runs the same: the fit config (but where it is written, where its
    shards and text matrix lie, and whether it resumed), the shards' fingerprint, the text
    matrix's content hash and the checkpoint format (a run this ecgshard cannot load is no
    run to reuse). A working directory moved or copied elsewhere keeps its runs."""
    (shard_dir,) = fc.shards
    config = {k: v for k, v in asdict(fc).items() if k not in ("out", "resume") + PATHS}
    # An experiment trains on one shard set: keyed without per-set weights, as before fits
    # over several sets existed (so runs trained then are still reused).
    del config["shard_weights"]
    # Settings added since are keyed only where they differ from what runs did before them
    # (fit.BEFORE_RECORDED), so that runs trained then are still reused.
    for k, before in fit.BEFORE_RECORDED.items():
        if config[k] == before:
            del config[k]
    return {"config": json.loads(json.dumps(config)),
            "checkpoint_schema": shards.CHECKPOINT_SCHEMA_VERSION,
            "shards_fingerprint": shards.load_manifest(shard_dir)["fingerprint"],
            "text_sha256": shards.read_text_matrix(fc.text).sha256}


PATHS = ("shards", "text")


def _without_paths(key):
    """A stored run key less the paths that keys held before 2026-12-04."""
    return dict(key, config={k: v for k, v in key.get("config", {}).items() if k not in PATHS})


def _keyed_as(summary_file, key):
    if not summary_file.exists():
        return False
    return _without_paths(json.loads(summary_file.read_text()).get("key", {})) == key


def holdout_splits(cfg, shard_dir, manifest):
    """The default holdout first, then random draws of ``holdout_size`` classes: the codes a
    run is asked to hold out (``fit`` closes them over their related classes; a closed list
    would be closed again there, and a class taken along for a shared name would then be
    followed as if asked for). Judged and told apart by their closures.

    Only the training and validation folds decide: a class is drawn with at least
    ``min_val_positives`` positives in the validation folds, and a random split is kept only if
    the records it excludes are at most ``max_excluded`` of the training folds. The test fold
    is never read here.
    """
    classes = manifest["classes"]
    codes = tuple(shards.class_codes(manifest))
    folds = cfg.fit
    n_train, _, train_pos = count_selection(Selection(str(shard_dir), tuple(folds.train_folds),
                                                      codes))
    _, _, val_pos = count_selection(Selection(str(shard_dir), tuple(folds.val_folds), codes))

    def excluded_share(holdout):
        _, dropped, _ = count_selection(Selection(str(shard_dir), tuple(folds.train_folds), codes,
                                                  tuple(holdout)))
        return dropped / max(1, n_train)

    eligible = [c for c, n, t in zip(codes, val_pos, train_pos)
                if n >= cfg.min_val_positives and t / max(1, n_train) <= cfg.max_excluded]
    splits, closures = [], []
    default = concepts.default_holdout(codes)
    if default:
        # The package's default is always reported (it is what `fit --holdout default` does);
        # the table states the share of training records each split excluded.
        splits.append(default)
        closures.append(concepts.resolve_holdout(default, classes, expand=True))
    rng = np.random.default_rng(cfg.fit.seed if cfg.split_seed is None else cfg.split_seed)
    tries = 0
    while len(splits) < cfg.splits and tries < 200 and eligible:
        tries += 1
        pick = sorted(str(c) for c in rng.choice(eligible, size=min(cfg.holdout_size,
                                                                    len(eligible)),
                                                 replace=False))
        full = concepts.resolve_holdout(list(pick), classes, expand=True)
        if full not in closures and excluded_share(full) <= cfg.max_excluded:
            splits.append(pick)
            closures.append(full)
    if not splits:
        raise ECGShardError(f"no holdout split found: no class has {cfg.min_val_positives} "
                            f"positives in validation folds {folds.val_folds} while excluding at "
                            f"most {cfg.max_excluded:.0%} of the training records")
    return splits


def _zeroshot(cfg, run_dir, shard_dir, text_file, out, **kw):
    return zeroshot.run(replace(cfg.zeroshot, run=str(run_dir), shards=str(shard_dir),
                                text=str(text_file), out=str(out), **kw))


def run_a(cfg: ExperimentConfig):
    work, text_file, variant = _prepare(cfg, "a", ["ptbxl"])
    shard_dir = work / "shards" / "ptbxl"
    manifest = shards.load_manifest(shard_dir)
    splits = holdout_splits(cfg, shard_dir, manifest)
    # Scoring on the validation folds chooses a recipe; the test folds are then never read.
    folds = {"folds": tuple(cfg.fit.val_folds)} if cfg.score == "val" else {}
    reports, outs = [], []
    for i, holdout in enumerate(splits):
        run_dir = _fitted(cfg, shard_dir, text_file, work / "runs", f"a-split{i}{variant}",
                          holdout)
        outs.append(work / "reports" / (run_dir.name + _report_suffix(cfg)))
        reports.append(_zeroshot(cfg, run_dir, shard_dir, text_file, outs[-1], **folds))
        info = shards.read_run_info(run_dir)
        dropped = info.records_excluded_for_heldout_labels["train"]
        reports[-1]["excluded_train_share"] = dropped / max(1, dropped + info.records["train"])
    pooled = pool_unseen(reports, outs, seed=cfg.fit.seed)
    section = report.markdown_a(cfg, manifest, reports, pooled)
    key = _key("experiment-a", cfg)
    write_section(cfg.results, key, section)
    figures = dict(report.figures_a(reports), pooled_unseen=pooled)
    shards.write_json(work / f"{key}.json", {"config": json.loads(json.dumps(asdict(cfg))),
                                             "reports": [str(o) for o in outs], **figures})
    return {"splits": [r["provenance"]["holdout"] for r in reports],
            "reports": [str(o) for o in outs], "markdown": section, **figures}


def pool_unseen(reports, report_dirs, seed=0):
    """One headline over every (split, class) instance of the splits' unseen macros.

    The point figure is the mean AUROC over the instances; its 95% interval resamples patients
    (each report's saved replicates: the same test records and seed in every split, so one
    replicate is one draw of patients for all of them) and, within each replicate, the
    instances. The controls are pooled the same way: the wrong-text null reassigns every
    instance a random wrong text, the abnormality margin is paired replicate by replicate, and
    each untrained-encoder seed gets its pooled macro. None when no split has an unseen class
    in its macro."""
    inst, reps, fingerprints = [], [], set()
    for r, out in zip(reports, report_dirs):
        g = r["groups"].get("unseen") or {}
        if not g.get("classes"):
            continue
        saved = Path(out) / zeroshot.REPLICATES
        loaded = dict(np.load(saved)) if saved.exists() else None
        if loaded is not None:
            fingerprints.add(str(loaded["records"][0]))
        rows = {c["code"]: c for c in r["classes"]}
        for code in g["classes"]:
            inst.append(rows[code])
            if loaded is not None and "baseline_auroc" in loaded:
                col = list(loaded["codes"]).index(code)
                reps.append((loaded["auroc"][:, col], loaded["baseline_auroc"][:, col]))
    if not inst:
        return None
    auroc = float(np.mean([c["auroc"] for c in inst]))
    out = {"n_instances": len(inst), "n_classes": len({c["code"] for c in inst}),
           "macro_auroc": round(auroc, 6), "macro_auroc_ci": None,
           "bootstrap": "patients and classes" if len(reps) == len(inst) else None,
           "same_records_every_split": len(fingerprints) == 1}
    base = [c["abnormality_auroc"] for c in inst]
    margin_ci = None
    if len(reps) == len(inst):
        own_r, base_r = (np.stack(x, axis=1) for x in zip(*reps))    # (n_boot, instances)
        rng = np.random.default_rng(seed)
        drawn = rng.integers(0, len(inst), own_r.shape)
        own_b = np.take_along_axis(own_r, drawn, axis=1).mean(axis=1)
        base_b = np.take_along_axis(base_r, drawn, axis=1).mean(axis=1)
        out["macro_auroc_ci"] = metrics.percentile_ci(own_b)
        margin_ci = metrics.percentile_ci(own_b - base_b)
    if all(b is not None for b in base):
        out["abnormality_baseline"] = {"macro_auroc": round(float(np.mean(base)), 6),
                                       "margin": round(auroc - float(np.mean(base)), 6),
                                       "margin_ci": margin_ci,
                                       **specificity.baseline_choice(inst)}
    wrong = [c["wrong_text"] for c in inst]
    if all(wrong):
        out["wrong_text"] = specificity.wrong_text_null(auroc, wrong, seed=seed)
        out["class_specific"] = bool(out["wrong_text"]["p"] < specificity.ALPHA)
    within = [c["within_abnormal_auroc"] for c in inst]
    within_base = [c["within_abnormal_abnormality_auroc"] for c in inst]
    out["within_abnormal"] = {"macro_auroc": _mean(within),
                              "abnormality_macro_auroc": _mean(within_base)}
    # the untrained encoders of a seed are the same network in every split: pool per seed
    per_seed = [(r["groups"]["unseen"]["n_classes"], r["groups"]["unseen"]["control"]["values"])
                for r in reports if (r["groups"].get("unseen") or {}).get("control")]
    if per_seed and len({len(v) for _, v in per_seed}) == 1:
        values = np.sum([n * np.asarray(v) for n, v in per_seed], axis=0) / \
            sum(n for n, _ in per_seed)
        out["control"] = {"mean": round(float(values.mean()), 6),
                          "min": round(float(values.min()), 6),
                          "max": round(float(values.max()), 6), "n_seeds": len(values)}
        out["distinguishable_from_nulls"] = bool(auroc > values.max())
    out["zero_shot_claim"] = specificity.zero_shot_claim(out)
    out["verdict"] = specificity.verdict(out)
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 6) if values else None


def run_b(cfg: ExperimentConfig):
    return _transfer(cfg, "b", "ptbxl", ["cinc2021"])


def run_c(cfg: ExperimentConfig):
    return _transfer(cfg, "c", "mimic", ["ptbxl"] + (["cinc2021"] if cfg.cinc else []))


def _transfer(cfg, which, trained, scored):
    """Fit on every class of the ``trained`` set; score every class of each ``scored`` set
    zero-shot (all folds: another dataset), as seen, related and unseen concepts."""
    work, text_file, variant = _prepare(cfg, which, [trained] + scored)
    run_dir = _fitted(cfg, work / "shards" / trained, text_file, work / "runs",
                      f"{which}-all-{trained}{variant}", ())
    sections, outs = [], []
    for name in scored:
        outs.append(work / "reports" / f"{which}-{name}-{run_dir.name}{_report_suffix(cfg)}")
        result = _zeroshot(cfg, run_dir, work / "shards" / name, text_file, outs[-1],
                           classes="all")
        sections.append(report.markdown_transfer(
            cfg, which, trained, shards.load_manifest(work / "shards" / name), result))
    section = "\n".join(sections)
    write_section(cfg.results, _key(f"experiment-{which}", cfg), section)
    return {"reports": [str(o) for o in outs], "markdown": section}


# ---------------------------------------------------------------- results.md

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


def _report_suffix(cfg):
    """Reports scored with fewer leads, another threshold rule or scoring, or on the validation
    folds sit beside the default ones, not over them."""
    z = cfg.zeroshot
    return ("-leads-" + "-".join(z.leads) if z.leads else "") + \
        ("" if z.threshold == default(ZeroShotConfig, "threshold")
         else "-threshold-" + z.threshold.replace(":", "")) + \
        ("" if z.scoring == default(ZeroShotConfig, "scoring") else "-scoring-" + z.scoring) + \
        ("-val" if cfg.score == "val" else "")


def _key(name, cfg):
    label = "".join(ch if ch.isalnum() else "-" for ch in cfg.label.lower())[:60].strip("-")
    return f"{name}-{label}" if label else name


def _slug(model):
    return "".join(ch if ch.isalnum() else "-" for ch in str(model)).strip("-")[-48:]
