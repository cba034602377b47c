"""``ecgshard zeroshot``: score classes by cosine similarity to their text, and report.

Same shard set as the run (Experiment A): the run's test folds, held-out classes by default.
Another shard set (Experiment B): every fold, every class with a text and positives, each marked
*seen* (its concept was a training class, ``labels.seen_status``) or *unseen*, with macro figures
per group, overall and per source database.

Every number in ``report.json`` carries its provenance: run, checkpoint, shards, folds,
classes, text model and threshold rule. Two reference points sit beside the zero-shot figures:
the trained classes scored by the same encoder, and a random-embedding control (the same
pipeline with an untrained encoder).
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import labels as L
from . import metrics as M
from . import shards as S
from .errors import ECGShardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroShotConfig:
    run: str
    shards: str
    text: str
    out: str
    classes: str = "heldout"            # heldout | all | CODE,CODE,...
    folds: tuple | None = None          # default: the run's test folds (same shards) or all
    bootstrap: int = 1000
    threshold: str = "val-seen"         # val-seen | val-z | youden | fixed:X
    checkpoint: str = "best"
    device: str = "auto"
    save_embeddings: bool = False
    control: bool = True
    seed: int = 0


def run(cfg: ZeroShotConfig):
    """Evaluate; returns the report dict written to ``OUT/report.json``."""
    import torch

    from .data import Selection, load_selection
    from .fit import embed
    from .models import build_model
    from .text import resolve_device

    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run)
    ck_path = run_dir / f"checkpoint-{cfg.checkpoint}.pt"
    ck = S.load_checkpoint(ck_path, map_location="cpu")
    run_classes = json.loads((run_dir / "classes.json").read_text())
    train_codes, holdout = list(ck["train_codes"]), list(ck["holdout"])
    text = S.read_text_matrix(cfg.text)
    _check_text_space(text, ck)

    manifest = S.load_manifest(cfg.shards)
    same_set = manifest["fingerprint"] == run_classes["shards_fingerprint"] or (
        manifest.get("dataset_fingerprint") is not None
        and manifest.get("dataset_fingerprint") == run_classes.get("dataset_fingerprint"))
    folds = tuple(cfg.folds) if cfg.folds else (
        tuple(run_classes["folds"]["test"]) if same_set else tuple(range(1, 11)))
    if same_set:
        steering = set(folds) & set(run_classes["folds"]["train"] + run_classes["folds"]["val"])
        if steering:
            log.warning("evaluating on folds %s that the run trained or validated on",
                        sorted(steering))
    targets = _target_classes(cfg.classes, manifest, text, train_codes, holdout, same_set)
    seen = L.seen_status(targets, train_codes)
    if same_set:
        seen = {c: (c if c in train_codes else None) for c in targets}

    # On the run's own dataset the trained classes' labels come along, so that the reference
    # figure below reuses these records' embeddings instead of reading and embedding them again.
    label_codes = list(dict.fromkeys(targets + (train_codes if same_set else [])))
    data = load_selection(Selection(cfg.shards, folds, tuple(label_codes)), with_ids=True)
    excluded = {}
    if not same_set:
        # Another collection can hold the training database itself (the Challenge's PTB-XL
        # records are PTB-XL records): those were trained on, so they are not scored.
        overlap = set(run_classes.get("shard_sources", [])) & set(data["source"])
        if overlap:
            drop = np.isin(data["source"], sorted(overlap))
            excluded = {s: int((data["source"] == s).sum()) for s in sorted(overlap)}
            log.warning("not scoring %s: the same database the run was trained on", excluded)
            data = {k: v[~drop] for k, v in data.items()}
    if len(data["labels"]) == 0:
        raise ECGShardError(f"no records in folds {folds} of {cfg.shards}")
    column = {c: i for i, c in enumerate(label_codes)}
    all_labels = data["labels"]
    data["labels"] = all_labels[:, :len(targets)]
    model = build_model(ck["model_config"])
    model.load_state_dict(ck["model"])
    model.to(device)
    text_rows = text.emb[text.rows(targets)]
    emb = embed(model, data["signal"], device, amp=True)
    scores = emb @ text_rows.T

    threshold, rule = _threshold(cfg, ck, run_classes, model, device, scores, data["labels"],
                                 text_rows)
    report = {
        "provenance": {
            "run": str(run_dir.resolve()), "checkpoint": str(ck_path.resolve()),
            "checkpoint_val_macro_auroc": ck.get("val_macro_auroc"),
            "shards": str(Path(cfg.shards).resolve()),
            "shards_fingerprint": manifest["fingerprint"],
            "same_shard_set_as_training": same_set, "folds": list(folds),
            "n_records": int(len(data["labels"])), "text": str(Path(cfg.text).resolve()),
            "text_model": text.attrs.get("model_id"), "text_pooling": text.attrs.get("pooling"),
            "text_templates": text.attrs.get("templates"),
            "train_classes": train_codes, "holdout": holdout,
            "strict_zero_shot": run_classes.get("strict_zero_shot", True),
            "threshold_rule": rule, "bootstrap": cfg.bootstrap, "config": asdict(cfg),
            "excluded_sources_same_as_training": excluded},
    }
    names = dict(zip(text.codes, text.names))
    classes, groups = _evaluate(scores, data["labels"], targets, seen, names, threshold,
                                cfg.bootstrap, cfg.seed)
    report["classes"] = classes
    report["groups"] = groups
    report["not_evaluable"] = [c["code"] for c in classes if c["auroc"] is None]
    report["per_source"] = _per_source(scores, data["labels"], data["source"], targets, seen)

    refs = {}
    if same_set and holdout:
        # The trained classes on the same test records: what the encoder does where it learned.
        t_scores = emb @ text.emb[text.rows(train_codes)].T
        auroc, ap = M.per_class(t_scores, all_labels[:, [column[c] for c in train_codes]])
        refs["trained_classes_same_folds"] = {"macro_auroc": _num(M.macro(auroc)),
                                              "macro_ap": _num(M.macro(ap)),
                                              "n_classes": int(np.isfinite(auroc).sum())}
    if cfg.control:
        torch.manual_seed(cfg.seed + 1)
        control = build_model(ck["model_config"]).to(device)
        c_scores = embed(control, data["signal"], device, amp=True) @ text_rows.T
        auroc, ap = M.per_class(c_scores, data["labels"])
        refs["random_encoder_control"] = {
            "macro_auroc": _num(M.macro(auroc)), "macro_ap": _num(M.macro(ap)),
            "note": "same pipeline, untrained encoder (seeded init)"}
    report["references"] = refs

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    S.write_json(out / "report.json", report)
    _write_per_class_csv(out / "per_class.csv", classes)
    _plots(out, scores, data["labels"], targets, seen, names, classes)
    if cfg.save_embeddings:
        _save_embeddings(out / "embeddings.h5", emb, data, folds, report["provenance"])
    log.debug("report written to %s", out)
    return report


def _check_text_space(text, ck):
    """The text matrix must come from the model the run was trained against."""
    if ck.get("learned_class_emb") is not None:
        raise ECGShardError("this run learned its class embeddings (--learn-class-embeddings, a "
                            "supervised reference); its classes are not tied to text, so it "
                            "cannot score classes zero-shot")
    dim = ck["model_config"]["text_dim"]
    if text.emb.shape[1] != dim:
        raise ECGShardError(f"text matrix has {text.emb.shape[1]}-dimensional embeddings, the "
                            f"run's encoder outputs {dim}: they come from different text models")
    if text.attrs.get("model_id") != ck.get("text_model"):
        raise ECGShardError(f"text matrix model {text.attrs.get('model_id')!r} differs from the "
                            f"run's {ck.get('text_model')!r}: embeddings of different models do "
                            f"not share a space. Re-run embed-text with the run's model.")
    train = ck.get("text_emb_train")
    present = [c for c in ck["train_codes"] if c in set(text.codes)]
    if train is not None and present:
        rows = text.emb[text.rows(present)]
        ref = np.asarray(train)[[ck["train_codes"].index(c) for c in present]]
        if not np.allclose(rows, ref, atol=1e-4):
            raise ECGShardError("the text matrix embeds the training classes differently from "
                                "the one the run used (other pooling, template or texts)")


def _target_classes(spec, manifest, text, train_codes, holdout, same_set):
    in_text = set(text.codes)
    vocab = S.class_codes(manifest)
    if spec == "heldout":
        if same_set:
            if not holdout:
                raise ECGShardError("this run held out no classes; use --classes all or a list")
            targets = list(holdout)
        else:
            targets = [c for c in vocab if c in in_text]
    elif spec == "all":
        targets = [c for c in vocab if c in in_text]
    else:
        targets = [c.strip() for c in spec.split(",") if c.strip()]
        bad = [c for c in targets if c not in vocab]
        if bad:
            raise ECGShardError(f"classes {bad} are not in the shard vocabulary")
    missing = [c for c in targets if c not in in_text]
    if missing:
        raise ECGShardError(f"no text embedding for {missing}; add them with embed-text")
    return targets


def _threshold(cfg, ck, run_classes, model, device, scores, labels, text_rows):
    """The decision threshold(s) and a sentence saying where they come from."""
    from .data import Selection, load_selection
    from .fit import embed

    if cfg.threshold == "youden":
        return M.youden_threshold(scores, labels), \
            "OPTIMISTIC: per-class Youden threshold chosen on the evaluated labels themselves"
    if cfg.threshold.startswith("fixed:"):
        value = float(cfg.threshold.split(":", 1)[1])
        return value, f"fixed cosine threshold {value}"
    if cfg.threshold not in ("val-seen", "val-z"):
        raise ECGShardError("--threshold must be val-seen, val-z, youden or fixed:X")
    # Both rules are chosen on the run's validation folds with the training classes' labels;
    # the evaluated labels never see them being chosen.
    val_sel = Selection(run_classes["shards"], tuple(run_classes["folds"]["val"]),
                        tuple(ck["train_codes"]), tuple(ck["holdout"]))
    val = load_selection(val_sel)
    v_emb = embed(model, val["signal"], device, amp=True)
    v_scores = v_emb @ np.asarray(ck["text_emb_train"]).T
    folds = run_classes["folds"]["val"]
    if cfg.threshold == "val-seen":
        value = M.pooled_youden_threshold(v_scores, val["labels"])
        return value, (f"cosine threshold {value:.4f}: mean-Youden optimum over the training "
                       f"classes on validation folds {folds}")
    # val-z: each class's cosine is standardised by its mean and spread over the validation
    # records (inputs only, so unseen classes get a scale too), and one z threshold is chosen
    # on the training classes there.
    z_train = (v_scores - v_scores.mean(0)) / v_scores.std(0).clip(min=1e-6)
    z = M.pooled_youden_threshold(z_train, val["labels"])
    target_val = v_emb @ text_rows.T
    value = target_val.mean(0) + z * target_val.std(0).clip(min=1e-6)
    return value, (f"per-class cosine thresholds mean + {z:.3f} sd of each class's scores on the "
                   f"validation folds {folds} (z chosen by mean Youden over the training classes "
                   f"there; no evaluated labels used)")


def _evaluate(scores, labels, targets, seen, names, threshold, n_boot, seed):
    auroc, ap = M.per_class(scores, labels)
    sens, spec, f1 = M.at_threshold(scores, labels, threshold)
    boot = M.bootstrap_per_class(scores, labels, n_boot, seed) if n_boot > 0 else None

    def interval(metric, cols, macro=False):
        """95% bootstrap interval of one class, or of the macro over ``cols``."""
        if boot is None:
            return None
        replicates = boot[metric][:, cols]
        return M.percentile_ci(M.macro_rows(replicates) if macro else replicates)

    classes = []
    for i, code in enumerate(targets):
        classes.append({
            "code": code, "name": names.get(code, code),
            "group": "seen" if seen.get(code) else "unseen", "seen_as": seen.get(code),
            "n_pos": int(labels[:, i].sum()), "n": int(len(labels)),
            "auroc": _num(auroc[i]), "auroc_ci": interval("auroc", i),
            "ap": _num(ap[i]), "prevalence": float(labels[:, i].mean()),
            "sensitivity": _num(sens[i]), "specificity": _num(spec[i]), "f1": _num(f1[i]),
            "threshold": _num(np.broadcast_to(threshold, (len(targets),))[i])})
    groups = {}
    for name in ("all", "seen", "unseen"):
        cols = [i for i, c in enumerate(classes) if name == "all" or c["group"] == name]
        if not cols:
            continue
        ok = [i for i in cols if classes[i]["auroc"] is not None]
        groups[name] = {
            "classes": [classes[i]["code"] for i in ok],
            "n_classes": len(ok),
            "macro_auroc": _num(M.macro(auroc[cols])),
            "macro_auroc_ci": interval("auroc", cols, macro=True) if ok else None,
            "macro_ap": _num(M.macro(ap[cols])),
            "macro_ap_ci": interval("ap", cols, macro=True) if ok else None,
            "micro_auroc": _num(M.micro_auroc(scores, labels, ok)) if ok else None,
            "macro_sensitivity": _num(M.macro(sens[cols])),
            "macro_specificity": _num(M.macro(spec[cols])),
            "macro_f1": _num(M.macro(f1[cols]))}
    return classes, groups


def _per_source(scores, labels, sources, targets, seen):
    out = {}
    for source in sorted(set(sources)):
        mask = sources == source
        auroc, ap = M.per_class(scores[mask], labels[mask])
        entry = {"n_records": int(mask.sum())}
        for group in ("seen", "unseen"):
            cols = [i for i, c in enumerate(targets) if bool(seen.get(c)) == (group == "seen")]
            ok = [i for i in cols if np.isfinite(auroc[i])]
            entry[group] = {"n_classes": len(ok), "macro_auroc": _num(M.macro(auroc[cols]))
                            if cols else None, "macro_ap": _num(M.macro(ap[cols])) if cols
                            else None}
        out[source] = entry
    return out


def _num(x):
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def _write_per_class_csv(path, classes):
    fields = ["code", "name", "group", "seen_as", "n_pos", "n", "prevalence", "auroc",
              "auroc_ci_low", "auroc_ci_high", "ap", "sensitivity", "specificity", "f1",
              "threshold"]
    with S.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for c in classes:
                ci = c["auroc_ci"] or [None, None]
                w.writerow(dict(c, auroc_ci_low=ci[0], auroc_ci_high=ci[1]))


def _plots(out, scores, labels, targets, seen, names, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    shown = [i for i, c in enumerate(classes) if c["auroc"] is not None and c["group"] == "unseen"]
    shown = shown or [i for i, c in enumerate(classes) if c["auroc"] is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for i in shown[:20]:
        fpr, tpr, _ = roc_curve(labels[:, i], scores[:, i])
        prec, rec, _ = precision_recall_curve(labels[:, i], scores[:, i])
        label = f"{targets[i]} ({classes[i]['auroc']:.2f})"
        ax1.plot(fpr, tpr, label=label)
        ax2.plot(rec, prec, label=targets[i])
    ax1.plot([0, 1], [0, 1], "k:", lw=1)
    ax1.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (zero-shot)")
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall (zero-shot)")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc_pr.png", dpi=110)
    plt.close(fig)

    ok = [c for c in classes if c["auroc"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(ok) + 2), 6))
    x = np.arange(len(ok))
    vals = [c["auroc"] for c in ok]
    lo = [c["auroc"] - c["auroc_ci"][0] if c["auroc_ci"] else 0 for c in ok]
    hi = [c["auroc_ci"][1] - c["auroc"] if c["auroc_ci"] else 0 for c in ok]
    colors = ["tab:blue" if c["group"] == "seen" else "tab:orange" for c in ok]
    ax.bar(x, vals, yerr=[lo, hi], color=colors, capsize=3)
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.set_xticks(x, [c["code"] if c["code"] == c["name"] else f"{c['name'][:26]} ({c['code']})"
                      for c in ok], rotation=75, ha="right", fontsize=7)
    ax.set(ylim=(0, 1), ylabel="AUROC (95% bootstrap CI)",
           title="per-class zero-shot AUROC (orange: unseen, blue: seen)")
    fig.tight_layout()
    fig.savefig(out / "auroc_per_class.png", dpi=110)
    plt.close(fig)


def _save_embeddings(path, emb, data, folds, provenance):
    import h5py

    with S.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("emb", data=emb.astype(np.float32))
            f.create_dataset(S.RECORD_ID, data=data["record_id"].astype(object),
                             dtype=h5py.string_dtype())
            f.create_dataset(S.SOURCE, data=data["source"].astype(object),
                             dtype=h5py.string_dtype())
            f.attrs["provenance"] = json.dumps(provenance)
            f.attrs["folds"] = json.dumps(list(folds))


def summary_lines(report):
    p = report["provenance"]
    lines = [f"zero-shot on {p['n_records']} records, folds {p['folds']} of {p['shards']}",
             f"  text model: {p['text_model']}; threshold: {p['threshold_rule']}"]
    for name, g in report["groups"].items():
        ci = g.get("macro_auroc_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"  {name:>6}: {g['n_classes']:3d} classes  macro AUROC "
                     f"{_fmt(g['macro_auroc'])}{ci_text}  macro AP {_fmt(g['macro_ap'])}  "
                     f"F1 {_fmt(g['macro_f1'])}")
    for name, ref in report["references"].items():
        lines.append(f"  reference {name}: macro AUROC {_fmt(ref['macro_auroc'])}")
    if report["not_evaluable"]:
        lines.append(f"  not evaluable (no positives or no negatives): {report['not_evaluable']}")
    return lines


def _fmt(x):
    return "  n/a" if x is None else f"{x:.3f}"


def report_table(report_dirs):
    """``ecgshard report``: several reports side by side, one row per figure."""
    reports = [json.loads((Path(d) / "report.json").read_text()) for d in report_dirs]
    rows = [("records", lambda r: str(r["provenance"]["n_records"])),
            ("folds", lambda r: _fold_ranges(r["provenance"]["folds"])),
            ("text model", lambda r: str(r["provenance"]["text_model"]).split(" (")[0])]
    for group in ("unseen", "seen", "all"):
        for key in ("n_classes", "macro_auroc", "macro_ap", "macro_f1"):
            rows.append((f"{group} {key}", lambda r, g=group, k=key: _cell(r["groups"].get(g, {})
                                                                            .get(k))))
    rows.append(("trained classes AUROC", lambda r: _cell(
        r["references"].get("trained_classes_same_folds", {}).get("macro_auroc"))))
    rows.append(("random control AUROC", lambda r: _cell(
        r["references"].get("random_encoder_control", {}).get("macro_auroc"))))
    names = [Path(d).name for d in report_dirs]
    cells = [[get(r) for r in reports] for _, get in rows]
    width = max(len(x) for x in names + [c for row in cells for c in row]) + 2
    lines = [f"{'':<24}" + "".join(f"{n:>{width}}" for n in names)]
    for (label, _), row in zip(rows, cells):
        lines.append(f"{label:<24}" + "".join(f"{c:>{width}}" for c in row))
    return lines


def _fold_ranges(folds):
    """[1, 2, 3, 5] -> '1-3,5'."""
    out, start = [], None
    for i, f in enumerate(folds):
        if start is None:
            start = f
        if i + 1 == len(folds) or folds[i + 1] != f + 1:
            out.append(str(start) if start == f else f"{start}-{f}")
            start = None
    return ",".join(out)


def _cell(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)
