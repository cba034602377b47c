"""``ecgshard probe``: linear probes on frozen embeddings, the protocol published ECG–text
models report (1%, 10% and 100% of the training labels; macro AUROC on the test folds).

The run's encoder embeds the shard set once; for each fraction, a share of the training
folds' records is drawn (by patient, so a patient's records stay together; the same draw for
every encoder), one L2-regularised logistic regression per class is fitted on the standardised
embeddings, and the test folds are scored. The same probe on an untrained encoder of the same
architecture is the baseline it must beat. The probe sees every class's labels, held-out ones
included: it measures what the frozen embedding carries, not zero-shot transfer.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import metrics, shards
from .config import ProbeConfig
from .embed import RunRecords
from .errors import ECGShardError
from .run import Run

log = logging.getLogger(__name__)


def run(cfg: ProbeConfig):
    """Fit and score the probes; returns the report (also ``OUT/probe.json`` with ``--out``)."""
    run = Run.load(cfg.run, cfg.checkpoint)
    info = run.info
    train_folds = tuple(cfg.train_folds or info.folds["train"])
    test_folds = tuple(cfg.test_folds or info.folds["test"])
    if set(train_folds) & set(test_folds):
        raise ECGShardError(f"train folds {list(train_folds)} and test folds "
                            f"{list(test_folds)} overlap: the probe would be scored on records "
                            f"it was fitted on")
    records = RunRecords(run, cfg.shards, train_folds + test_folds,
                         allow_signal_mismatch=cfg.allow_signal_mismatch)
    _check_encoder_never_saw(info, records.manifest, test_folds)
    baseline_seed = cfg.seed + 1
    encoders = {"trained": records.embed(cfg.device),
                "untrained": records.embed(cfg.device, seed=baseline_seed)}
    data, codes = records.data, records.codes
    fold = np.asarray(data["fold"])
    train, test = np.isin(fold, train_folds), np.isin(fold, test_folds)
    for role, mask, folds in (("train", train, train_folds), ("test", test, test_folds)):
        if not mask.any():
            raise ECGShardError(f"no records in the probe's {role} folds {list(folds)} of "
                                f"{cfg.shards} (folds present: "
                                f"{sorted(int(f) for f in records.manifest['folds'])})")
    labels = np.asarray(data["labels"], dtype=np.uint8)
    patients = shards.patient_keys(data["source"], data["patient_id"])
    rows = []
    for fraction in cfg.fractions:
        picked = draw_patients(patients, train, fraction, cfg.seed)
        row = {"fraction": fraction, "train_records": int(picked.sum())}
        for name, emb in encoders.items():
            auroc, classes = probe_auroc(emb, labels, picked, test, cfg.min_positives, cfg.c,
                                         desc=f"probe {fraction:.0%}, {name} encoder")
            row[name] = {"macro_auroc": metrics.macro(auroc), "n_classes": len(classes),
                         "per_class": {codes[c]: float(a) for c, a in zip(classes, auroc)}}
        rows.append(row)
        log.info("probe %.0f%% (%d records): trained %.4f, untrained %.4f over %d classes",
                 100 * fraction, row["train_records"], row["trained"]["macro_auroc"],
                 row["untrained"]["macro_auroc"], row["trained"]["n_classes"])
    report = {"provenance": dict(records.provenance(), train_folds=list(train_folds),
                                 test_folds=list(test_folds), seed=cfg.seed, c=cfg.c,
                                 min_positives=cfg.min_positives,
                                 baseline=records.provenance(baseline_seed)["encoder"]),
              "fractions": rows}
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        shards.write_json(Path(cfg.out) / "probe.json", report)
    return report


def _check_encoder_never_saw(info, manifest, test_folds):
    """On the run's own dataset, the probe's test folds must not be folds the encoder trained
    or chose its checkpoint on: its embedding of them would carry their labels."""
    if manifest.get("dataset_fingerprint") not in info.dataset_fingerprint:
        return
    seen = sorted(set(test_folds) & set(info.folds["train"] + info.folds["val"]))
    if seen:
        raise ECGShardError(f"test folds {seen} are folds the run trained or validated on "
                            f"(train {info.folds['train']}, validation {info.folds['val']}): "
                            f"its encoder has seen their records. Test on "
                            f"{info.folds['test']}")


def draw_patients(patients, pool, fraction, seed):
    """A mask over records: the records of a seeded ``fraction`` of the patients in ``pool``
    (at least one patient)."""
    ids = np.unique(patients[pool])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ids, size=max(1, int(round(fraction * len(ids)))), replace=False)
    return pool & np.isin(patients, chosen)


def probe_auroc(emb, labels, train, test, min_positives, c, desc="probe"):
    """Per-class test AUROC of logistic regressions fitted on the ``train`` records, for the
    classes with a positive and a negative there and ``min_positives`` test positives;
    returns (AUROC per class, class indices). A bar (``desc``) moves per class: on 17,000
    records a regression takes seconds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from tqdm.auto import tqdm

    scaler = StandardScaler().fit(emb[train])
    x_train, x_test = scaler.transform(emb[train]), scaler.transform(emb[test])
    y_train, y_test = labels[train], labels[test]
    classes = [k for k in range(labels.shape[1])
               if 0 < y_train[:, k].sum() < len(y_train) and y_test[:, k].sum() >= min_positives
               and y_test[:, k].sum() < len(y_test)]
    scores = np.zeros((len(x_test), len(classes)))
    for j, k in enumerate(tqdm(classes, desc=desc, unit="class", disable=None, leave=False)):
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train[:, k])
        scores[:, j] = clf.decision_function(x_test)
    auroc, _ = metrics.per_class(scores, y_test[:, classes])
    return auroc, classes


def summary_lines(report):
    p = report["provenance"]
    lines = [f"linear probe on frozen embeddings of {p['run']} ({p['checkpoint']} checkpoint), "
             f"train folds {p['train_folds']}, test folds {p['test_folds']}; macro AUROC over "
             f"classes with >= {p['min_positives']} test positives; baseline: {p['baseline']}",
             "labels used | training records | classes | trained encoder | untrained encoder"]
    for r in report["fractions"]:
        lines.append(f"{100 * r['fraction']:g}% | {r['train_records']} | "
                     f"{r['trained']['n_classes']} | {r['trained']['macro_auroc']:.3f} | "
                     f"{r['untrained']['macro_auroc']:.3f}")
    return lines
