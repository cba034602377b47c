"""``ecgshard predict``: score raw ECG files against any class texts with a trained run.

Records are WFDB (``.hea`` with its ``.dat`` or ``.mat``), or NumPy (``.npy``: an array of 12
leads in the standard order, ``.npz``: ``signal`` with optional ``fs`` and ``leads``), in
millivolts; a directory means every such record under it. Each goes through the run's own
signal path (``ZeroShotClassifier``). A record that cannot be used is a row with its reason,
never a crash; the scores of the others are written.
"""
from __future__ import annotations

import csv
import logging
import zipfile
from pathlib import Path

import numpy as np

from . import readers, shards
from .classifier import ZeroShotClassifier
from .config import PredictConfig
from .errors import BadRecordError, ECGShardError

log = logging.getLogger(__name__)

RECORD_SUFFIXES = (".hea", ".npy", ".npz")


def run(cfg: PredictConfig):
    """Score every record; returns ``{"classes", "status", "rows"}`` (rows as written)."""
    clf = ZeroShotClassifier.from_run(cfg.run, cfg.device, cfg.checkpoint, cfg.flat_leads)
    classes = class_list(cfg)
    table = clf.class_status(classes)
    status = list(table["label"])
    paths = record_paths(cfg.inputs)
    if not paths:
        raise ECGShardError(f"no record files ({', '.join(RECORD_SUFFIXES)}) in "
                            f"{', '.join(cfg.inputs)}")
    ok, rows, prob = [], [], None
    for path in paths:
        try:
            sig, fs, leads = read_any(path, cfg.fs)
            x, length = clf.prepare(sig, fs, leads, str(path))
        except BadRecordError as exc:
            rows.append({"record": str(path), "status": "skipped", "reason": exc.reason,
                         "detail": exc.detail})
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rows.append({"record": str(path), "status": "skipped", "reason": "unreadable",
                         "detail": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"record": str(path), "status": "ok", "reason": "", "detail": ""})
        ok.append((len(rows) - 1, x, length))
    if ok:
        emb = clf.encode_prepared(np.stack([x for _, x, _ in ok]),
                                  np.asarray([n for _, _, n in ok]), cfg.leads or None,
                                  cfg.batch_size)
        cos = clf.scores(emb, classes)
        prob = clf.probabilities(cos)
        for k, (i, _, _) in enumerate(ok):
            rows[i].update({f"cos:{c}": float(v) for c, v in zip(classes, cos[k])})
            if prob is not None:
                rows[i].update({f"p:{c}": float(v) for c, v in zip(classes, prob[k])})
            best = np.argsort(-cos[k])[:cfg.top]
            rows[i]["top"] = "; ".join(f"{classes[j]} {cos[k, j]:.3f}" for j in best)
    if cfg.out:
        _write(cfg.out, rows, classes, table, prob is not None)
    skipped = sum(r["status"] != "ok" for r in rows)
    log.info("%d records scored, %d skipped, %d classes", len(rows) - skipped, skipped,
             len(classes))
    return {"classes": classes, "status": status, "rows": rows,
            "leads": list(cfg.leads) or list(shards.LEADS)}


def class_list(cfg):
    """The class texts to score, in order, from the one source given."""
    if cfg.classes:
        classes = list(cfg.classes)
    elif cfg.classes_file:
        lines = Path(cfg.classes_file).read_text().splitlines()
        classes = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    else:
        classes = [c["name"] for c in shards.load_manifest(cfg.vocab)["classes"]
                   if c.get("known") is not False]
    classes = list(dict.fromkeys(classes))
    if not classes:
        raise ECGShardError("no class texts to score")
    return classes


def record_paths(inputs):
    """Record files named, and every record file under the directories named, in order."""
    out = []
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix in RECORD_SUFFIXES)
        elif p.suffix in (".dat", ".mat") and p.with_suffix(".hea").exists():
            out.append(p.with_suffix(".hea"))
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def read_any(path, fs=None):
    """``(sig mV, fs, lead names)`` of a WFDB header or a NumPy file (its orientation and
    lead count are checked by ``ZeroShotClassifier.prepare``)."""
    path = Path(path)
    if not path.exists():
        raise BadRecordError("missing_file", f"{path} does not exist")
    if path.suffix == ".hea":
        sig, rate, leads, _, _ = readers.read_wfdb(path)
        return sig, rate, leads
    if path.suffix not in (".npy", ".npz"):
        raise BadRecordError("unknown_format", f"{path}: not a .hea, .npy or .npz record")
    try:
        sig, fs, leads = _read_numpy(path, fs)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise BadRecordError("unreadable_signal", f"{path}: {type(exc).__name__}: {exc}") \
            from None
    if fs is None:
        raise BadRecordError("bad_sampling_rate", f"{path}: no sampling rate; give --fs")
    return sig, fs, leads


def _read_numpy(path, fs):
    leads = list(shards.LEADS)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32), fs, leads
    with np.load(path, allow_pickle=False) as z:
        if "signal" not in z:
            raise BadRecordError("unreadable_signal", f"{path}: no 'signal' array")
        if "fs" in z:
            if z["fs"].size != 1:
                raise BadRecordError("bad_sampling_rate", f"{path}: 'fs' holds {z['fs'].size} "
                                     f"values; one sampling rate in Hz is expected")
            fs = float(z["fs"])
        if "leads" in z:
            leads = [str(x) for x in np.atleast_1d(z["leads"])]
        return z["signal"].astype(np.float32), fs, leads


def _write(out, rows, classes, table, with_prob):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["record", "status", "reason", "detail", "top"] + [f"cos:{c}" for c in classes] + \
        ([f"p:{c}" for c in classes] if with_prob else [])
    with shards.atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
    with shards.atomic_path(out.with_suffix(".classes.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "status_for_this_run", "why"])
            w.writerows(zip(classes, table["label"], table["why"]))
