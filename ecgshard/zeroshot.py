"""``ecgshard zeroshot``: score classes by cosine similarity to their text, and report.

Same shard set as the run (Experiment A): the run's test folds, held-out classes by default.
Another shard set (Experiment B): every fold, every class with a text and positives.

Every target class is *seen* (its concept was a training class), *related* (a parent, child or
near-sibling was trained) or *unseen* (nothing related was trained), by the reviewed relation
table of ``ecgshard.concepts``; macro figures are given per group and the headline is *unseen*.
A class enters a macro only with ``min_positives`` positives (the others are listed), intervals
resample patients with the macro's class set fixed, and each group's macro AUROC is placed in
two nulls: the same pipeline with untrained encoders of several seeds, and the evaluated labels
shuffled across records. Those nulls destroy the "something is abnormal" signal too, so each
class and macro is also set against the controls of ``ecgshard.controls``: its labels scored
with the other classes' texts (the wrong-text null), a class-agnostic abnormality score, and
positives against abnormal records only. A figure is called class-specific only when it beats
the wrong-text null, and supports a zero-shot claim only when it also beats the untrained
encoders and the abnormality score (``controls.unbeaten``).

Every number in ``report.json`` carries its provenance: run, checkpoint, shards, folds,
classes, text model and threshold rule.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import concepts, findings, signal
from . import controls as specificity
from . import metrics
from . import shards
from . import report as present
from .data import Selection, load_selection
from .device import resolve_device
from .config import ZeroShotConfig, fixed_threshold
from .errors import ECGShardError
from .run import Run
from .scoring import Scorer

log = logging.getLogger(__name__)


def run(cfg: ZeroShotConfig):
    """Evaluate; returns the report dict written to ``OUT/report.json``. ``OUT`` is locked
    while this runs and replaced as a whole at the end (``shards.atomic_dir``)."""
    shards.check_replaceable(cfg.out, REPORT)
    with shards.exclusive_lock(cfg.out, "zeroshot", beside=True):
        return _run(cfg)


def _run(cfg):
    device = resolve_device(cfg.device)
    trained = Run.load(cfg.run, cfg.checkpoint)
    text = shards.read_text_matrix(cfg.text) if cfg.text else trained.text_matrix()
    _check_text_space(text, trained)
    manifest = shards.load_manifest(cfg.shards)
    signal.require_same(trained.info, manifest, cfg.shards, cfg.allow_signal_mismatch)
    same_set, folds = _evaluated_folds(cfg, trained, manifest)
    targets, no_text = _target_classes(cfg.classes, manifest, text, trained.holdout, same_set)
    data, excluded = _load_records(cfg, trained, manifest, folds, targets, same_set)
    signal.check_scale(trained.info.input_lead_sd,
                       signal.amplitude_scale(data["signal"], data["length"]),
                       f"the records of {cfg.shards}")
    if cfg.leads:
        shards.keep_leads(data["signal"], cfg.leads)

    encoder = trained.encoder(device)
    text_rows, sentences = text.emb[text.rows(targets)], text.sentences(targets)
    in_text = set(text.codes)
    vocab = [c for c in shards.class_codes(manifest) if c in in_text]   # the texts to score with
    score = Scorer(cfg.scoring, trained.text_rows, text.emb[text.rows(vocab)],
                   trained.finding_rows, trained.finding_codes)
    status = trained.statuses(targets)
    # the classes --scoring findings-unseen reads through the trained statements
    through = np.array([status[t].group == "unseen" for t in targets], bool)
    if text.sentence_emb is None and score.reads(len(targets), through).any():
        log.warning("%s predates reading sentences: classes are read through the statements by "
                    "their whole text rows, not sentence by sentence as today (give --text a "
                    "matrix this ecgshard's embed-text wrote with the run's options)",
                    cfg.text or trained.dir / shards.RUN_TEXT)
    emb = encoder.encode(data["signal"], data["length"], device=device)
    scores = score(emb, text_rows, through, sentences)           # (N, C)
    threshold, rule = _threshold(cfg, trained, scores, data["labels"], text_rows, score,
                                 through, sentences)
    controls = _control_scores(trained, data, text_rows, device, cfg, score, through,
                               sentences) if cfg.control else None
    against = _specificity_inputs(emb, text, vocab, data, score, through, trained.train_codes)

    report = {"provenance": _provenance(cfg, trained, manifest, text, same_set, folds, data,
                                        rule, excluded)}
    report["provenance"]["classes_without_text"] = no_text
    report["provenance"]["normal_text"] = against["normal_code"]
    report["provenance"]["abnormality_baselines"] = list(against["baselines"])
    report["provenance"]["wrong_text_pool"] = against["pool"]
    classes, groups, replicates = _evaluate(scores, data["labels"], targets, status,
                                            dict(zip(text.codes, text.names)), threshold, cfg,
                                            data["patient"], controls, against)
    nearest = nearest_trained(text_rows, trained, dict(zip(text.codes, text.names))
                              | dict(zip(text.finding_codes, text.finding_texts)))
    read = read_through(score, text_rows, through, sentences, text)
    graph = concepts.load()
    for row, near, statements in zip(classes, nearest, read):
        row["family"] = concepts.family(row["code"], graph)
        row["nearest_trained"] = near
        row["read_through"] = statements
    references = _references(cfg, trained, text, emb, data, groups, same_set, score)
    told = (references.get("trained_statements_same_records") or {}).get("per_statement", {})
    for statements in filter(None, read):
        for s in statements:
            s["auroc_here"] = told.get(s["code"], {}).get("auroc")
    report.update(classes=classes, groups=groups,
                  not_evaluable=[c["code"] for c in classes if c["auroc"] is None],
                  per_source=_per_source(scores, data["labels"], data["source"], classes,
                                         cfg.min_positives),
                  references=references)
    _write(cfg, report, emb, scores, data, targets, replicates)
    return report


NEAREST = 5


def nearest_trained(rows, trained, names):
    """Per target text row, the ``NEAREST`` trained texts closest to it in the frozen text
    space — training classes and trained measured-finding statements (``names``: code ->
    name or statement, as the text matrix writes them) — with their cosine: what an unseen
    class is scored through."""
    codes = list(trained.train_codes) + trained.finding_codes
    trained_rows = np.concatenate([trained.text_rows, trained.finding_rows]) \
        if trained.finding_codes else trained.text_rows
    texts = [names.get(c, c) for c in codes]
    cos = rows @ trained_rows.T
    return [[{"code": codes[j], "text": texts[j], "cosine": round(float(row[j]), 4)}
             for j in np.argsort(-row)[:NEAREST]] for row in cos]


def read_through(score, rows, through, sentences, text):
    """Per target class the scoring reads through the trained statements, the ``NEAREST``
    statements with the most weight (averaged over its reading sentences); None for a class
    scored by its row alone."""
    marked = score.reads(len(rows), through)
    if not marked.any():
        return [None] * len(rows)
    weights = score.statement_weights(rows, sentences)
    texts = dict(zip(text.finding_codes, text.finding_texts))
    codes = score.finding_codes
    return [[{"code": codes[j], "text": texts.get(codes[j], codes[j]),
              "weight": round(float(w[j]), 4)} for j in np.argsort(-w)[:NEAREST]]
            if m else None for w, m in zip(weights, marked)]


def _evaluated_folds(cfg, trained, manifest):
    """Whether the shards hold the run's own dataset (by record identity, so a rebuild with
    other parameters counts), and the folds to score: its test folds there, all elsewhere."""
    info = trained.info
    same_set = manifest["fingerprint"] in info.shards_fingerprint or (
        manifest.get("dataset_fingerprint") is not None
        and manifest.get("dataset_fingerprint") in info.dataset_fingerprint)
    folds = tuple(cfg.folds) if cfg.folds else (
        tuple(info.folds["test"]) if same_set else tuple(range(1, 11)))
    if same_set:
        steering = set(folds) & set(info.folds["train"] + info.folds["val"])
        if steering:
            log.warning("evaluating on folds %s that the run trained or validated on",
                        sorted(steering))
    return same_set, folds


def _load_records(cfg, trained, manifest, folds, targets, same_set):
    """The evaluated records with the targets' labels (and, on the run's own dataset, the
    training classes' labels too, as ``train_labels`` over ``train_codes``: the reference
    figure reuses these records' embeddings instead of reading and embedding them again). A run
    trained on several shard sets has training classes of other code systems too; only this
    set's own are referenced."""
    vocab = shards.class_codes(manifest)
    own = set(vocab)
    extra = [c for c in trained.train_codes if c in own] if same_set else []
    # every code of the set is read (the training classes among them): which records are
    # normal depends on all their labels
    label_codes = list(dict.fromkeys(targets + list(vocab)))
    statements = _measured_statements(trained, manifest)
    data = load_selection(Selection(cfg.shards, folds, tuple(label_codes), findings=statements),
                          with_ids=True)
    excluded = {}
    if not same_set:
        # Another collection can hold the training database itself (the Challenge's PTB-XL
        # records are PTB-XL records): those were trained on, so they are not scored.
        overlap = set(trained.info.shard_sources) & set(data["source"])
        if overlap:
            drop = np.isin(data["source"], sorted(overlap))
            excluded = {s: int((data["source"] == s).sum()) for s in sorted(overlap)}
            log.warning("not scoring %s: the same database the run was trained on", excluded)
            data = {k: v[~drop] for k, v in data.items()}
    if len(data["labels"]) == 0:
        raise ECGShardError(f"no records in folds {folds} of {cfg.shards}")
    column = {c: i for i, c in enumerate(label_codes)}
    data["normal"] = specificity.normal_records(data["labels"][:, [column[c] for c in vocab]],
                                                vocab, concepts.load())
    data["train_labels"] = data["labels"][:, [column[c] for c in extra]]
    data["train_codes"] = extra
    data["statement_labels"] = data["labels"][:, len(label_codes):]
    data["statement_codes"] = list(statements)
    data["labels"] = data["labels"][:, :len(targets)]
    # A patient's records are resampled together; records without a patient stand alone.
    data["patient"] = shards.patient_keys(data["source"], data["patient_id"])
    return data, excluded


def _measured_statements(trained, manifest):
    """The run's trained statements where the evaluated shards carry the measurements they
    are read from (this version's, all of them); none otherwise."""
    return tuple(trained.finding_codes) if shards.measured_now(manifest, findings.NEEDS) else ()


def _provenance(cfg, trained, manifest, text, same_set, folds, data, rule, excluded):
    """What every number of the report rests on."""
    return {
        "run": str(trained.dir.resolve()), "checkpoint": str(trained.path.resolve()),
        "checkpoint_val_macro_auroc": trained.ck.get("val_macro_auroc"),
        "ensemble": trained.ck.get("ensemble"),         # the runs averaged (ecgshard ensemble)
        "shards": str(Path(cfg.shards).resolve()), "shards_fingerprint": manifest["fingerprint"],
        "same_shard_set_as_training": same_set, "folds": list(folds),
        "n_records": int(len(data["labels"])), "n_patients": int(len(set(data["patient"]))),
        "text": str(Path(cfg.text or Path(cfg.run) / shards.RUN_TEXT).resolve()),
        "text_model": text.attrs.get("model_id"),
        "text_pooling": text.attrs.get("pooling"), "text_templates": text.attrs.get("templates"),
        "train_classes": trained.train_codes, "holdout": trained.holdout,
        "holdout_requested": trained.info.holdout_requested,
        "strict_zero_shot": trained.info.strict_zero_shot,
        "scoring": cfg.scoring,
        # how a class read through the statements is read: its finding sentences one by one,
        # or, in a text matrix from before them, its whole row
        "statement_reading": "sentences" if text.sentence_emb is not None else "row",
        "threshold_rule": rule, "bootstrap": cfg.bootstrap,
        "bootstrap_unit": "patient",
        "min_positives_for_macro": cfg.min_positives,
        "control_seeds": cfg.control_seeds if cfg.control else 0,
        "permutations": cfg.permutations, "config": asdict(cfg),
        "leads": list(cfg.leads) if cfg.leads else list(shards.LEADS),
        "excluded_sources_same_as_training": excluded}


def _references(cfg, trained, text, emb, data, groups, same_set, score):
    """Figures beside the zero-shot ones: the trained classes on the same records (what the
    encoder does where it learned) and the random-encoder summary."""
    refs = {}
    if same_set and trained.holdout:
        # the rows the run trained against, whether or not the given matrix holds them
        index = [trained.train_codes.index(c) for c in data["train_codes"]]
        sentences = _train_sentences(trained, score)
        scores = score(emb, trained.text_rows[index],
                       sentences=None if sentences is None else [sentences[i] for i in index])
        auroc, ap = metrics.per_class(scores, data["train_labels"])
        refs["trained_classes_same_folds"] = {"macro_auroc": _num(metrics.macro(auroc)),
                                              "macro_ap": _num(metrics.macro(ap)),
                                              "n_classes": int(np.isfinite(auroc).sum())}
    if data["statement_codes"]:
        # how well the encoder tells each trained statement on these records: whether a class
        # read through the statements was read through ones it can tell
        auroc, _ = metrics.per_class(emb @ trained.finding_rows.T, data["statement_labels"])
        texts = dict(zip(text.finding_codes, text.finding_texts))
        refs["trained_statements_same_records"] = {
            "macro_auroc": _num(metrics.macro(auroc)),
            "n_statements": int(np.isfinite(auroc).sum()),
            "per_statement": {c: {"text": texts.get(c, c), "auroc": _num(a),
                                  "n_pos": int(data["statement_labels"][:, j].sum())}
                              for j, (c, a) in enumerate(zip(data["statement_codes"], auroc))}}
    if cfg.control:
        ctrl = groups.get("all", {}).get("control") or {}
        refs["random_encoder_control"] = {
            "macro_auroc": ctrl.get("mean"), "sd": ctrl.get("sd"), "n_seeds": cfg.control_seeds,
            "note": "same pipeline, untrained encoders (one per seed), every group's macro "
                    "class set; per group under groups.*.control"}
    return refs


REPORT = "report.json"


def _write(cfg, report, emb, scores, data, targets, replicates):
    with shards.atomic_dir(cfg.out, REPORT) as out:
        _write_set(out, cfg, report, emb, scores, data, targets, replicates)
    log.debug("report written to %s", cfg.out)


def _write_set(out, cfg, report, emb, scores, data, targets, replicates):
    shards.write_json(out / REPORT, report)
    if replicates is not None:
        # per-class bootstrap replicates: pooling several reports (Experiment A's splits)
        # resamples the same patients in every one (same records, same seed: checked by hash)
        with shards.atomic_path(out / REPLICATES) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, codes=np.asarray(targets, dtype=str), **replicates,
                         records=np.asarray([shards.fingerprint(
                             [list(map(str, data["record_id"])), cfg.seed, cfg.bootstrap])]))
    present.write_per_class_csv(out / "per_class.csv", report["classes"])
    present.write_plots(out, scores, data["labels"], targets, report["classes"])
    if cfg.save_embeddings:
        shards.write_embeddings(out / "embeddings.h5", emb, data, targets,
                                report["provenance"])


REPLICATES = "replicates.npz"


def _specificity_inputs(emb, text, vocab, data, score, through, trained_codes):
    """What the class-specificity controls score with: every wrong-text candidate's scores,
    and the class-agnostic abnormality scores (``controls.abnormality_scores``; minus the
    cosine to the normal text only where the run trained one). The wrong texts are scored as
    the own text is: read through the statements, too, for a class ``through`` marks."""
    graph = concepts.load()
    pool = specificity.wrong_text_pool(vocab, graph)
    normal_code = specificity.normal_text_code(text.codes, graph, vocab, trained_codes)
    if normal_code is None and specificity.normal_text_code(text.codes, graph, vocab):
        log.warning("the run trained no normal text (NORM or sinus rhythm), so the cosine to "
                    "one would be no learned direction: the abnormality baseline is the mean "
                    "over the wrong-text candidates alone")
    normal_score = None if normal_code is None else \
        -(emb @ text.emb[text.rows([normal_code])].T)[:, 0]
    rows, sentences = (text.emb[text.rows(pool)], text.sentences(pool)) if pool else (None, None)
    pool_scores = score(emb, rows, sentences=sentences) if pool else None
    pool_scores_through = score(emb, rows, np.ones(len(pool), bool), sentences) \
        if pool and score.reads_through and through.any() else None
    return {"pool": pool, "pool_scores": pool_scores, "pool_scores_through": pool_scores_through,
            "through": through, "normal_code": normal_code,
            "baselines": specificity.abnormality_scores(normal_score, pool_scores,
                                                        pool_scores_through, through),
            "normal": data["normal"], "source": data["source"], "graph": graph}


def _train_sentences(trained, score):
    """The training classes' reading sentences where the rule reads them (``--scoring
    findings``); None otherwise, so the run's text matrix is read only then."""
    return trained.train_sentences if score.reads(len(trained.train_codes)).any() else None


def _control_scores(trained, data, text_rows, device, cfg, score, through, sentences):
    """Scores of ``control_seeds`` untrained encoders, by the same rule: (seeds, N, C)."""
    out = []
    from tqdm.auto import tqdm

    for k in tqdm(range(cfg.control_seeds), desc="untrained encoders", unit="encoder",
                  disable=None, leave=False):
        control = trained.untrained(cfg.seed * 1000 + 1 + k, device)
        out.append(score(control.encode(data["signal"], data["length"], device=device,
                                        desc=f"untrained encoder {k + 1}"), text_rows, through,
                         sentences))
    return np.stack(out) if out else None


TEXT_RECIPE = ("pooling", "templates", "text_mode", "model_revision")


def _text_differences(text, trained):
    """What differs between a text matrix and the run's own ("templates: [...] (run) vs
    [...] (given)"), or that the class texts themselves do."""
    try:
        own = trained.text_matrix().attrs
    except ECGShardError:
        return "the run's own matrix cannot be read to compare with"
    differs = [f"{k}: {own.get(k)!r} (run) vs {text.attrs.get(k)!r} (given)"
               for k in TEXT_RECIPE if own.get(k) != text.attrs.get(k)]
    return "; ".join(differs) or ("same model, pooling, templates and text mode: the class "
                                  "texts themselves differ")


def _check_text_space(text, trained):
    """The text matrix must come from the model the run was trained against."""
    trained.refuse_learned_classes()
    ck = trained.ck
    dim = trained.text_rows.shape[1]
    if text.emb.shape[1] != dim:
        raise ECGShardError(f"text matrix has {text.emb.shape[1]}-dimensional embeddings, the "
                            f"run's encoder outputs {dim}: they come from different text models")
    if text.attrs.get("model_id") != ck.get("text_model"):
        raise ECGShardError(f"text matrix model {text.attrs.get('model_id')!r} differs from the "
                            f"run's {ck.get('text_model')!r}: embeddings of different models do "
                            f"not share a space. Re-run embed-text with the run's model.")
    present = [c for c in trained.train_codes if c in set(text.codes)]
    if present:
        rows = text.emb[text.rows(present)]
        ref = trained.text_rows[[trained.train_codes.index(c) for c in present]]
        if not np.allclose(rows, ref, atol=1e-4):
            raise ECGShardError(f"the text matrix embeds the training classes differently from "
                                f"the one the run used ({_text_differences(text, trained)}). "
                                f"Score with the run's own copy, "
                                f"{trained.dir / shards.RUN_TEXT}, or rerun embed-text with "
                                f"the run's options")


def _target_classes(spec, manifest, text, holdout, same_set):
    """The classes to score, and those of the set left out for want of a text embedding (a
    report never shrinks silently: they are warned about and listed in its provenance)."""
    in_text = set(text.codes)
    vocab = shards.class_codes(manifest)
    in_vocab = set(vocab)
    if spec == "heldout" and same_set:
        if not holdout:
            raise ECGShardError("this run held out no classes; use --classes all or a list")
        # a run over several shard sets held out codes of every set; this set's are scored
        candidates = [c for c in holdout if c in in_vocab]
    elif spec in ("heldout", "all"):
        candidates = vocab
    else:
        candidates = [c.strip() for c in spec.split(",") if c.strip()]
        bad = [c for c in candidates if c not in in_vocab]
        if bad:
            raise ECGShardError(f"classes {bad} are not in the shard vocabulary")
        missing = [c for c in candidates if c not in in_text]
        if missing:
            raise ECGShardError(f"no text embedding for {missing}; add them with embed-text")
    targets = [c for c in candidates if c in in_text]
    no_text = [c for c in candidates if c not in in_text]
    if not targets:
        raise ECGShardError(f"the text matrix ({text.attrs.get('model_id')}, {len(text.codes)} "
                            f"classes) has no embedding for any of the {len(candidates)} classes "
                            f"to score ({', '.join(candidates[:10])}...); run `ecgshard "
                            f"embed-text --vocab` over these shards")
    if no_text:
        log.warning("%d of %d classes have no text embedding and are not scored: %s",
                    len(no_text), len(candidates), ", ".join(no_text))
    return targets, no_text


def _threshold(cfg, trained, scores, labels, text_rows, score, through, sentences):
    """The decision threshold(s) and a sentence saying where they come from."""
    if cfg.threshold == "youden":
        return metrics.youden_threshold(scores, labels), \
            "OPTIMISTIC: per-class Youden threshold chosen on the evaluated labels themselves"
    if cfg.threshold.startswith("fixed:"):
        value = fixed_threshold(cfg.threshold)
        return value, f"fixed cosine threshold {value}"
    # Both rules are chosen on the run's validation folds with the training classes' labels
    # (the checkpoint's own embeddings of them, kept by fit); the evaluated labels never see
    # them being chosen.
    v_emb, v_labels = trained.ck["validation"]["emb"], trained.ck["validation"]["labels"]
    v_scores = score(v_emb, trained.text_rows, sentences=_train_sentences(trained, score))
    folds = trained.info.folds["val"]
    if cfg.threshold == "val-seen":
        value = metrics.pooled_youden_threshold(v_scores, v_labels)
        return value, (f"cosine threshold {value:.4f}: mean-Youden optimum over the training "
                       f"classes on validation folds {folds}")
    # val-z: each class's cosine is standardised by its mean and spread over the validation
    # records (inputs only, so unseen classes get a scale too), and one z threshold is chosen
    # on the training classes there.
    z_train = (v_scores - v_scores.mean(0)) / v_scores.std(0).clip(min=1e-6)
    z = metrics.pooled_youden_threshold(z_train, v_labels)
    target_val = score(v_emb, text_rows, through, sentences)
    value = target_val.mean(0) + z * target_val.std(0).clip(min=1e-6)
    return value, (f"per-class cosine thresholds mean + {z:.3f} sd of each class's scores on the "
                   f"validation folds {folds} (z chosen by mean Youden over the training classes "
                   f"there; no evaluated labels used)")


def _evaluate(scores, labels, targets, status, names, threshold, cfg, patients, controls,
              against):
    """Per-class rows and per-group macro figures with intervals, nulls and the
    class-specificity controls; and the bootstrap replicates (own text and abnormality
    baseline, (n_boot, C) each) for pooling reports."""
    auroc, ap = metrics.per_class(scores, labels)
    sens, spec, f1 = metrics.at_threshold(scores, labels, threshold)
    n_classes = len(targets)
    base_scores, base_auroc, base_names, base_candidates = specificity.strongest_baseline(
        against["baselines"], labels)
    boot = None
    if cfg.bootstrap > 0:
        # one resampling for the own text and the baseline: the margin's interval is paired
        both = (scores, labels) if base_scores is None else \
            (np.hstack([scores, base_scores]), np.hstack([labels, labels]))
        boot = metrics.bootstrap_per_class(*both, cfg.bootstrap, cfg.seed, groups=patients)
        boot = {"auroc": boot["auroc"][:, :n_classes], "ap": boot["ap"][:, :n_classes],
                "baseline_auroc": boot["auroc"][:, n_classes:] if base_scores is not None
                else None}
    ctrl_auroc = np.stack([metrics.per_class_fast(c, labels)[0] for c in controls]) \
        if controls is not None else None
    n_pos = labels.sum(axis=0).astype(int)
    graph = against["graph"]
    if against["pool"]:
        cross = metrics.cross_auroc(against["pool_scores"], labels)            # (P, C)
        if against.get("pool_scores_through") is not None:
            cross = np.where(against["through"][None, :],
                             metrics.cross_auroc(against["pool_scores_through"], labels), cross)
        wrong = specificity.own_vs_wrong(auroc, cross, against["pool"], targets, graph)
    else:
        wrong = [None] * n_classes
    within = specificity.within_abnormal(scores, labels, against["normal"])
    within_base = specificity.within_abnormal(base_scores, labels, against["normal"]) \
        if base_scores is not None else np.full(n_classes, np.nan)
    by_source, carriers = specificity.within_source(scores, labels, against["source"])
    n_sources = len(set(against["source"]))

    classes = []
    for i, code in enumerate(targets):
        st = status[code]
        enough = bool(np.isfinite(auroc[i]) and n_pos[i] >= cfg.min_positives)
        row = {
            "code": code, "name": names.get(code, code), "group": st.group, "via": st.via,
            "why": st.why, "n_pos": int(n_pos[i]), "n": int(len(labels)),
            "in_macro": enough,
            "auroc": _num(auroc[i]),
            # below the macro minimum a percentile interval covers far less than it claims
            # (one positive: a 95% interval covers the truth about 15% of the time)
            "auroc_ci": metrics.percentile_ci(boot["auroc"][:, i])
            if boot is not None and enough else None,
            "ap": _num(ap[i]), "prevalence": float(labels[:, i].mean()),
            "sensitivity": _num(sens[i]), "specificity": _num(spec[i]), "f1": _num(f1[i]),
            "threshold": _num(np.broadcast_to(threshold, (len(targets),))[i]),
            "wrong_text": wrong[i], "abnormality_auroc": _num(base_auroc[i]),
            "abnormality_score": base_names[i], "abnormality_candidates": base_candidates[i],
            "within_abnormal_auroc": _num(within[i]),
            "within_abnormal_abnormality_auroc": _num(within_base[i]),
            "positive_sources": carriers[i],
            "single_source": bool(n_sources > 1 and len(carriers[i]) == 1),
            "within_source_auroc": _num(by_source[i])}
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
            _place_in_controls(g, [classes[i] for i in ok], boot, ok, against, cfg)
        groups[name] = g
    replicates = None if boot is None else {
        "auroc": boot["auroc"], **({"baseline_auroc": boot["baseline_auroc"]}
                                   if boot["baseline_auroc"] is not None else {})}
    return classes, groups, replicates


def _place_in_nulls(group, scores, labels, ctrl_auroc, cfg):
    """Add the random-encoder distribution, the permutation null and their verdict."""
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


def _place_in_controls(group, rows, boot, cols, against, cfg):
    """Add the class-specificity controls of the macro's classes (``rows``, columns ``cols``):
    the wrong-text null, the abnormality baseline with the paired margin, within-abnormal
    AUROC; ``class_specific`` and a ``verdict`` sentence."""
    value = group["macro_auroc"]
    wrong = [r["wrong_text"] for r in rows]
    if all(wrong):
        group["wrong_text"] = dict(
            specificity.wrong_text_null(value, wrong, seed=cfg.seed),
            best_single_text=specificity.best_single_text([w["aurocs"] for w in wrong]))
        group["class_specific"] = bool(group["wrong_text"]["p"] < specificity.ALPHA)
    if against["baselines"]:
        base = _num(np.mean([r["abnormality_auroc"] for r in rows]))
        margin_ci = None
        if boot is not None:
            margin_ci = metrics.percentile_ci(metrics.macro_rows(boot["auroc"][:, cols])
                                              - metrics.macro_rows(boot["baseline_auroc"][:,
                                                                                          cols]))
        group["abnormality_baseline"] = {
            "text": against["normal_code"], "macro_auroc": base,
            "margin": _num(value - base) if base is not None else None, "margin_ci": margin_ci,
            **specificity.baseline_choice(rows)}
    group["within_abnormal"] = {
        "macro_auroc": _num(metrics.macro(_values(rows, "within_abnormal_auroc"))),
        "abnormality_macro_auroc": _num(metrics.macro(
            _values(rows, "within_abnormal_abnormality_auroc"))),
        "normal_records_removed": int(against["normal"].sum())}
    group["within_source_macro_auroc"] = _num(metrics.macro(_values(rows,
                                                                    "within_source_auroc")))
    group["single_source_classes"] = [r["code"] for r in rows if r["single_source"]]
    unseen = all(r["group"] == "unseen" for r in rows)
    group["zero_shot_claim"] = specificity.zero_shot_claim(group, unseen)
    group["verdict"] = specificity.verdict(group, unseen)


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


def _values(rows, key):
    return [np.nan if r[key] is None else r[key] for r in rows]


def _num(x):
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)
