"""``ecgshard zeroshot``: score classes by cosine similarity to their text, and report.

Same shard set as the run (Experiment A): the run's test folds, held-out classes by default.
Another shard set (Experiment B): every fold, every class with a text and positives.

Every target class is *seen* (its concept was a training class), *related* (a parent, child or
near-sibling was trained) or *unseen* (nothing related was trained), by the reviewed relation
table of ``ecgshard.concepts``; macro figures are given per group and the headline is *unseen*.
A class enters a macro only with ``min_positives`` positives (the others are listed), intervals
resample patients with the macro's class set fixed, and each group's macro AUROC is placed in
two nulls: the same pipeline with untrained encoders of several seeds, and the evaluated labels
shuffled across records.

Every number in ``report.json`` carries its provenance: run, checkpoint, shards, folds,
classes, text model and threshold rule.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import concepts
from . import metrics
from . import shards
from .config import ZeroShotConfig, fixed_threshold
from .errors import ECGShardError

log = logging.getLogger(__name__)


def run(cfg: ZeroShotConfig):
    """Evaluate; returns the report dict written to ``OUT/report.json``."""
    from .data import Selection, load_selection
    from .device import resolve_device
    from .models import ZeroShotModel

    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run)
    ck_path = run_dir / f"checkpoint-{cfg.checkpoint}.pt"
    ck = shards.load_checkpoint(ck_path, map_location="cpu")
    run_classes = json.loads((run_dir / "classes.json").read_text())
    train_codes, holdout = list(ck["train_codes"]), list(ck["holdout"])
    text = shards.read_text_matrix(cfg.text)
    _check_text_space(text, ck)

    manifest = shards.load_manifest(cfg.shards)
    _check_signal_path(run_classes, manifest, cfg)
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
    status = concepts.load().statuses(targets, train_codes)

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
    # A patient's records are resampled together; records without a patient stand alone.
    patients = np.asarray([f"{s}/{p}" for s, p in zip(data["source"], data["patient_id"])])
    encoder = ZeroShotModel.from_checkpoint(ck).encoder.to(device)
    text_rows = text.emb[text.rows(targets)]
    emb = encoder.encode(data["signal"], data["length"], device=device)
    scores = emb @ text_rows.T

    threshold, rule = _threshold(cfg, ck, run_classes, encoder, device, scores, data["labels"],
                                 text_rows)
    controls = None
    if cfg.control:
        controls = _control_scores(ck, data, text_rows, device, cfg)
    report = {
        "provenance": {
            "run": str(run_dir.resolve()), "checkpoint": str(ck_path.resolve()),
            "checkpoint_val_macro_auroc": ck.get("val_macro_auroc"),
            "shards": str(Path(cfg.shards).resolve()),
            "shards_fingerprint": manifest["fingerprint"],
            "same_shard_set_as_training": same_set, "folds": list(folds),
            "n_records": int(len(data["labels"])), "n_patients": int(len(set(patients))),
            "text": str(Path(cfg.text).resolve()),
            "text_model": text.attrs.get("model_id"), "text_pooling": text.attrs.get("pooling"),
            "text_templates": text.attrs.get("templates"),
            "train_classes": train_codes, "holdout": holdout,
            "holdout_requested": run_classes.get("holdout_requested", holdout),
            "strict_zero_shot": run_classes.get("strict_zero_shot", True),
            "threshold_rule": rule, "bootstrap": cfg.bootstrap,
            "bootstrap_unit": "patient", "min_positives_for_macro": cfg.min_positives,
            "control_seeds": cfg.control_seeds if cfg.control else 0,
            "permutations": cfg.permutations, "config": asdict(cfg),
            "excluded_sources_same_as_training": excluded},
    }
    names = dict(zip(text.codes, text.names))
    classes, groups = _evaluate(scores, data["labels"], targets, status, names, threshold,
                                cfg, patients, controls)
    report["classes"] = classes
    report["groups"] = groups
    report["not_evaluable"] = [c["code"] for c in classes if c["auroc"] is None]
    report["per_source"] = _per_source(scores, data["labels"], data["source"], classes,
                                       cfg.min_positives)

    refs = {}
    if same_set and holdout:
        # The trained classes on the same test records: what the encoder does where it learned.
        t_scores = emb @ text.emb[text.rows(train_codes)].T
        auroc, ap = metrics.per_class(t_scores, all_labels[:, [column[c] for c in train_codes]])
        refs["trained_classes_same_folds"] = {"macro_auroc": _num(metrics.macro(auroc)),
                                              "macro_ap": _num(metrics.macro(ap)),
                                              "n_classes": int(np.isfinite(auroc).sum())}
    if controls is not None:
        ctrl = groups.get("all", {}).get("control") or {}
        refs["random_encoder_control"] = {
            "macro_auroc": ctrl.get("mean"), "sd": ctrl.get("sd"),
            "n_seeds": cfg.control_seeds,
            "note": "same pipeline, untrained encoders (one per seed), every group's macro "
                    "class set; per group under groups.*.control"}
    report["references"] = refs

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shards.write_json(out / "report.json", report)
    _write_per_class_csv(out / "per_class.csv", classes)
    _plots(out, scores, data["labels"], targets, classes)
    if cfg.save_embeddings:
        _save_embeddings(out / "embeddings.h5", emb, data, folds, report["provenance"])
    log.debug("report written to %s", out)
    return report


def _check_signal_path(run_classes, manifest, cfg):
    """The evaluated shards must have been made like the run's training shards."""
    trained = run_classes.get("signal_path")
    if trained is None:                        # runs written before the signal path was kept
        trained = shards.signal_path(shards.load_manifest(run_classes["shards"]))
    diffs = shards.signal_path_differences(trained, shards.signal_path(manifest))
    if diffs and not cfg.allow_signal_mismatch:
        raise ECGShardError(
            f"the evaluated shards {cfg.shards} were built with another signal path than the "
            f"run's training shards {run_classes['shards']} (training vs evaluated: "
            f"{'; '.join(diffs)}). Rebuild them with the run's settings, or pass "
            f"--allow-signal-mismatch if the difference is deliberate.")
    if diffs:
        log.warning("signal path differs from training (%s); allowed by "
                    "--allow-signal-mismatch", "; ".join(diffs))


def _control_scores(ck, data, text_rows, device, cfg):
    """Scores of ``control_seeds`` untrained encoders: (seeds, N, C)."""
    import torch

    from .models import ECGEncoder, EncoderConfig

    out = []
    for k in range(cfg.control_seeds):
        torch.manual_seed(cfg.seed * 1000 + 1 + k)
        control = ECGEncoder(EncoderConfig(**ck["model_config"])).to(device)
        out.append(control.encode(data["signal"], data["length"], device=device) @ text_rows.T)
    return np.stack(out) if out else None


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
    vocab = shards.class_codes(manifest)
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


def _threshold(cfg, ck, run_classes, encoder, device, scores, labels, text_rows):
    """The decision threshold(s) and a sentence saying where they come from."""
    from .data import Selection, load_selection

    if cfg.threshold == "youden":
        return metrics.youden_threshold(scores, labels), \
            "OPTIMISTIC: per-class Youden threshold chosen on the evaluated labels themselves"
    if cfg.threshold.startswith("fixed:"):
        value = fixed_threshold(cfg.threshold)
        return value, f"fixed cosine threshold {value}"
    # Both rules are chosen on the run's validation folds with the training classes' labels;
    # the evaluated labels never see them being chosen.
    val_sel = Selection(run_classes["shards"], tuple(run_classes["folds"]["val"]),
                        tuple(ck["train_codes"]), tuple(ck["holdout"]))
    val = load_selection(val_sel)
    v_emb = encoder.encode(val["signal"], val["length"], device=device)
    v_scores = v_emb @ np.asarray(ck["text_emb_train"]).T
    folds = run_classes["folds"]["val"]
    if cfg.threshold == "val-seen":
        value = metrics.pooled_youden_threshold(v_scores, val["labels"])
        return value, (f"cosine threshold {value:.4f}: mean-Youden optimum over the training "
                       f"classes on validation folds {folds}")
    # val-z: each class's cosine is standardised by its mean and spread over the validation
    # records (inputs only, so unseen classes get a scale too), and one z threshold is chosen
    # on the training classes there.
    z_train = (v_scores - v_scores.mean(0)) / v_scores.std(0).clip(min=1e-6)
    z = metrics.pooled_youden_threshold(z_train, val["labels"])
    target_val = v_emb @ text_rows.T
    value = target_val.mean(0) + z * target_val.std(0).clip(min=1e-6)
    return value, (f"per-class cosine thresholds mean + {z:.3f} sd of each class's scores on the "
                   f"validation folds {folds} (z chosen by mean Youden over the training classes "
                   f"there; no evaluated labels used)")


def _evaluate(scores, labels, targets, status, names, threshold, cfg, patients, controls):
    """Per-class rows and per-group macro figures with intervals and nulls."""
    auroc, ap = metrics.per_class(scores, labels)
    sens, spec, f1 = metrics.at_threshold(scores, labels, threshold)
    boot = metrics.bootstrap_per_class(scores, labels, cfg.bootstrap, cfg.seed, groups=patients) \
        if cfg.bootstrap > 0 else None
    ctrl_auroc = np.stack([metrics.per_class_fast(c, labels)[0] for c in controls]) \
        if controls is not None else None
    n_pos = labels.sum(axis=0).astype(int)

    classes = []
    for i, code in enumerate(targets):
        st = status[code]
        row = {
            "code": code, "name": names.get(code, code), "group": st.group, "via": st.via,
            "why": st.why, "n_pos": int(n_pos[i]), "n": int(len(labels)),
            "in_macro": bool(np.isfinite(auroc[i]) and n_pos[i] >= cfg.min_positives),
            "auroc": _num(auroc[i]),
            "auroc_ci": metrics.percentile_ci(boot["auroc"][:, i]) if boot is not None else None,
            "ap": _num(ap[i]), "prevalence": float(labels[:, i].mean()),
            "sensitivity": _num(sens[i]), "specificity": _num(spec[i]), "f1": _num(f1[i]),
            "threshold": _num(np.broadcast_to(threshold, (len(targets),))[i])}
        if ctrl_auroc is not None and np.isfinite(auroc[i]):
            row["control_auroc"] = {"mean": _num(ctrl_auroc[:, i].mean()),
                                    "min": _num(ctrl_auroc[:, i].min()),
                                    "max": _num(ctrl_auroc[:, i].max())}
        classes.append(row)

    groups = {}
    for name in ("all",) + concepts.GROUPS:
        cols = [i for i, c in enumerate(classes) if name == "all" or c["group"] == name]
        if not cols:
            continue
        ok = [i for i in cols if classes[i]["in_macro"]]
        few = {classes[i]["code"]: classes[i]["n_pos"] for i in cols
               if classes[i]["auroc"] is not None and not classes[i]["in_macro"]}
        g = {"classes": [classes[i]["code"] for i in ok], "n_classes": len(ok),
             "excluded_few_positives": few, "macro_auroc": None, "macro_auroc_ci": None,
             "macro_ap": None, "macro_ap_ci": None}
        if ok:
            g.update({
                "macro_auroc": _num(auroc[ok].mean()), "macro_ap": _num(ap[ok].mean()),
                "micro_auroc": _num(metrics.micro_auroc(scores, labels, ok)),
                "macro_sensitivity": _num(metrics.macro(sens[ok])),
                "macro_specificity": _num(metrics.macro(spec[ok])),
                "macro_f1": _num(metrics.macro(f1[ok]))})
            if boot is not None:
                rows = metrics.macro_rows(boot["auroc"][:, ok])
                g["macro_auroc_ci"] = metrics.percentile_ci(rows)
                g["macro_ap_ci"] = metrics.percentile_ci(metrics.macro_rows(boot["ap"][:, ok]))
                g["bootstrap_replicates_used"] = int(np.isfinite(rows).sum())
            _place_in_nulls(g, scores[:, ok], labels[:, ok],
                            ctrl_auroc[:, ok] if ctrl_auroc is not None else None, cfg)
        groups[name] = g
    return classes, groups


def _place_in_nulls(group, scores, labels, ctrl_auroc, cfg):
    """Add the random-encoder distribution, the permutation null and a verdict to ``group``."""
    value = group["macro_auroc"]
    beats = []
    if ctrl_auroc is not None:
        values = ctrl_auroc.mean(axis=1)
        group["control"] = {"values": [round(float(v), 6) for v in values],
                            "mean": _num(values.mean()),
                            "sd": _num(values.std(ddof=1)) if len(values) > 1 else None,
                            "min": _num(values.min()), "max": _num(values.max()),
                            **metrics.null_position(value, values)}
        beats.append(value > values.max())
    if cfg.permutations > 0:
        null = metrics.permutation_null(scores, labels, cfg.permutations, cfg.seed)
        group["permutation"] = {"mean": _num(null.mean()),
                                "q95": _num(np.quantile(null, 0.95)),
                                **metrics.null_position(value, null)}
        beats.append(group["permutation"]["p"] < 0.05)
    if beats:
        group["distinguishable_from_nulls"] = bool(all(beats))


def _per_source(scores, labels, sources, classes, min_positives):
    """Macro AUROC per source database and group, over the classes with enough positives
    there."""
    out = {}
    for source in sorted(set(sources)):
        mask = sources == source
        auroc, ap = metrics.per_class(scores[mask], labels[mask])
        n_pos = labels[mask].sum(axis=0)
        entry = {"n_records": int(mask.sum())}
        for group in concepts.GROUPS:
            ok = [i for i, c in enumerate(classes) if c["group"] == group
                  and np.isfinite(auroc[i]) and n_pos[i] >= min_positives]
            entry[group] = {"n_classes": len(ok),
                            "macro_auroc": _num(auroc[ok].mean()) if ok else None,
                            "macro_ap": _num(ap[ok].mean()) if ok else None}
        out[source] = entry
    return out


def _num(x):
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def _write_per_class_csv(path, classes):
    fields = ["code", "name", "group", "via", "why", "n_pos", "n", "in_macro", "prevalence",
              "auroc", "auroc_ci_low", "auroc_ci_high", "control_auroc_min", "control_auroc_max",
              "ap", "sensitivity", "specificity", "f1", "threshold"]
    with shards.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for c in classes:
                ci = c["auroc_ci"] or [None, None]
                ctrl = c.get("control_auroc") or {}
                w.writerow(dict(c, auroc_ci_low=ci[0], auroc_ci_high=ci[1],
                                control_auroc_min=ctrl.get("min"),
                                control_auroc_max=ctrl.get("max")))


GROUP_COLORS = {"seen": "tab:blue", "related": "tab:green", "unseen": "tab:orange"}


def _plots(out, scores, labels, targets, classes):
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
    colors = [GROUP_COLORS[c["group"]] for c in ok]
    ax.bar(x, vals, yerr=[lo, hi], color=colors, capsize=3)
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.set_xticks(x, [c["code"] if c["code"] == c["name"] else f"{c['name'][:26]} ({c['code']})"
                      for c in ok], rotation=75, ha="right", fontsize=7)
    ax.set(ylim=(0, 1), ylabel="AUROC (95% bootstrap CI)",
           title="per-class zero-shot AUROC (orange: unseen, green: related, blue: seen)")
    fig.tight_layout()
    fig.savefig(out / "auroc_per_class.png", dpi=110)
    plt.close(fig)


def _save_embeddings(path, emb, data, folds, provenance):
    import h5py

    with shards.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("emb", data=emb.astype(np.float32))
            f.create_dataset(shards.RECORD_ID, data=data["record_id"].astype(object),
                             dtype=h5py.string_dtype())
            f.create_dataset(shards.SOURCE, data=data["source"].astype(object),
                             dtype=h5py.string_dtype())
            f.attrs["provenance"] = json.dumps(provenance)
            f.attrs["folds"] = json.dumps(list(folds))


def summary_lines(report):
    p = report["provenance"]
    lines = [f"zero-shot on {p['n_records']} records ({p['n_patients']} patients), folds "
             f"{p['folds']} of {p['shards']}",
             f"  text model: {p['text_model']}; threshold: {p['threshold_rule']}",
             f"  macros over classes with >= {p['min_positives_for_macro']} positives; 95% CIs "
             f"resample patients"]
    for name in concepts.GROUPS + ("all",):
        g = report["groups"].get(name)
        if g is None:
            continue
        ci = g.get("macro_auroc_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"  {name:>7}: {g['n_classes']:3d} classes  macro AUROC "
                     f"{_fmt(g['macro_auroc'])}{ci_text}  macro AP {_fmt(g['macro_ap'])}  "
                     f"F1 {_fmt(g.get('macro_f1'))}  {null_text(g)}")
        if g["excluded_few_positives"]:
            lines.append(f"           not in the macro (too few positives): "
                         f"{g['excluded_few_positives']}")
    ref = report["references"].get("trained_classes_same_folds")
    if ref:
        lines.append(f"  reference trained classes, same records: macro AUROC "
                     f"{_fmt(ref['macro_auroc'])}")
    if report["not_evaluable"]:
        lines.append(f"  not evaluable (no positives or no negatives): {report['not_evaluable']}")
    return lines


def null_text(group):
    """'control 0.51 [0.44-0.58], perm p 0.001: distinguishable' for one group's macro."""
    parts = []
    ctrl = group.get("control")
    if ctrl:
        parts.append(f"random encoders {_fmt(ctrl['mean'])} [{_fmt(ctrl['min'])}, "
                     f"{_fmt(ctrl['max'])}] over {len(ctrl['values'])} seeds")
    perm = group.get("permutation")
    if perm and perm["p"] is not None:
        parts.append(f"permutation p {perm['p']:.3f}")
    if "distinguishable_from_nulls" in group:
        parts.append("above both nulls" if group["distinguishable_from_nulls"]
                     else "NOT distinguishable from the nulls")
    return "; ".join(parts)


def _fmt(x):
    return "  n/a" if x is None else f"{x:.3f}"


def report_table(report_dirs):
    """``ecgshard report``: several reports side by side, one row per figure."""
    reports = [json.loads((Path(d) / "report.json").read_text()) for d in report_dirs]
    rows = [("records", lambda r: str(r["provenance"]["n_records"])),
            ("folds", lambda r: _fold_ranges(r["provenance"]["folds"])),
            ("text model", lambda r: str(r["provenance"]["text_model"]).split(" (")[0])]
    for group in concepts.GROUPS + ("all",):
        for key in ("n_classes", "macro_auroc", "macro_ap", "macro_f1"):
            rows.append((f"{group} {key}", lambda r, g=group, k=key: _cell(r["groups"].get(g, {})
                                                                            .get(k))))
    rows.append(("trained classes AUROC", lambda r: _cell(
        r["references"].get("trained_classes_same_folds", {}).get("macro_auroc"))))
    rows.append(("random control AUROC", lambda r: _cell(
        r["references"].get("random_encoder_control", {}).get("macro_auroc"))))
    rows.append(("unseen vs nulls", lambda r: {True: "above", False: "NOT above", None: "-"}[
        r["groups"].get("unseen", {}).get("distinguishable_from_nulls")]))
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
