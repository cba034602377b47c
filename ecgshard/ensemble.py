"""Several runs of one recipe and holdout (fits of other seeds) written as one run: its encoder
is their encoders averaged (``models.EncoderEnsemble``), so ``zeroshot``, ``predict``,
``embed``, ``probe``, ``export`` and the Python API read it like any run.

The members must be runs of the same contract: the same training classes, holdout and
statements, the same shard sets and folds, signal path, text matrix and architecture. Their
stored validation embeddings (what ``zeroshot``'s validation thresholds are chosen on) are
averaged the way the encoders are, over the same validation records. On the PTB-XL dev tree,
three fits averaged land at the best single fit and about 0.01 above one fit's expectation on
every held-out and trained figure (``docs/findings.md``).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import metrics, shards
from .config import EnsembleConfig
from .errors import ECGShardError
from .models import EncoderConfig
from .run import Run, checkpoint_path

log = logging.getLogger(__name__)

# what every member's run record must hold alike (the text path as given may differ)
SAME_RECORD = ("train_codes", "holdout", "finding_codes", "folds", "shards_fingerprint",
               "signal_path", "text_sha256", "text_model", "class_texts_sha256",
               "strict_zero_shot")


def run(cfg: EnsembleConfig):
    """Write ``cfg.out``: the members' run record and text side, and a best and a last
    checkpoint, each the members' same checkpoint averaged. Returns the output path."""
    first = Path(cfg.runs[0])
    with shards.atomic_dir(cfg.out, shards.RUN_INFO) as tmp:
        for which in ("best", "last"):
            members = [Run.load(r, which) for r in cfg.runs]
            _check_alike(members)
            shards.save_checkpoint(checkpoint_path(tmp, which), _merged(members))
        for name in (shards.RUN_INFO, shards.RUN_TEXT, shards.RUN_CLASS_TEXTS):
            (tmp / name).write_bytes((first / name).read_bytes())
    log.info("%d runs written as one to %s", len(cfg.runs), cfg.out)
    return Path(cfg.out)


def _check_alike(members):
    first = members[0]
    for m in members:
        m.refuse_learned_classes()
        if EncoderConfig.from_dict(m.ck["model_config"]).members != 1:
            raise ECGShardError(f"{m.dir} is itself an ensemble; give its member runs instead")
    for m in members[1:]:
        a, b = asdict(first.info), asdict(m.info)
        differs = [f"{k}: {a[k]!r} ({first.dir}) vs {b[k]!r} ({m.dir})" for k in SAME_RECORD
                   if a[k] != b[k]]
        # read as configs: a run from before a field holds its default
        encoders = [EncoderConfig.from_dict(r.ck["model_config"]) for r in (first, m)]
        if encoders[0] != encoders[1]:
            differs.append(f"encoder: {encoders[0]} vs {encoders[1]}")
        if first.ck["loss_name"] != m.ck["loss_name"]:
            differs.append(f"loss: {first.ck['loss_name']} vs {m.ck['loss_name']}")
        if not np.array_equal(first.ck["validation"]["labels"], m.ck["validation"]["labels"]):
            differs.append("validation records: the labels differ")
        if differs:
            raise ECGShardError("runs averaged into one must share their classes, holdout, data, "
                                "text and encoder (fits of other seeds); they differ in "
                                + "; ".join(d[:300] for d in differs))


def _merged(members):
    """One checkpoint: member i's encoder weights under ``encoder.members.i``, the loss's
    scale and bias averaged, the validation embeddings averaged and the validation macro
    recomputed on them."""
    first = members[0]
    model = {}
    for i, m in enumerate(members):
        for key, value in m.ck["model"].items():
            if key.startswith("encoder."):
                model[f"encoder.members.{i}.{key[len('encoder.'):]}"] = value
    for key in first.ck["model"]:
        if not key.startswith("encoder."):
            model[key] = sum(m.ck["model"][key] for m in members) / len(members)
    config = EncoderConfig.from_dict(first.ck["model_config"])
    embs = [np.asarray(m.ck["validation"]["emb"], np.float32) for m in members]
    val = np.mean([e / np.linalg.norm(e, axis=1, keepdims=True) for e in embs], axis=0)
    val /= np.linalg.norm(val, axis=1, keepdims=True).clip(min=1e-12)
    labels = np.asarray(first.ck["validation"]["labels"])
    auroc, _ = metrics.per_class(val @ first.text_rows.T, labels)
    keep = ("loss_name", "train_codes", "finding_codes", "holdout", "text_sha256",
            "text_emb_train", "learned_class_emb", "text_model", "config")
    return {**{k: first.ck.get(k) for k in keep},
            "model": model, "model_config": asdict(replace(config, members=len(members))),
            "validation": {"emb": val, "labels": labels},
            "val_macro_auroc": float(metrics.macro(auroc)),
            "ensemble": [{"run": str(m.dir.resolve()), "seed": m.ck["config"].get("seed"),
                          "val_macro_auroc": m.ck.get("val_macro_auroc")} for m in members]}
