"""CODE-15%: ``exams.csv`` (exam_id, patient_id, age, is_male, the six label columns,
trace_file) and ``exams_part*.hdf5`` (``tracings`` (N, 4096, 12) in mV at 400 Hz, zero-padded
on both sides, and ``exam_id`` (N,))."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from .. import readers
from .. import shards
from ..errors import BadRecordError, ECGShardError
from .base import Database, Item, float_or, id_text, orphan, read_csv, skip

FS = 400.0
# The six labels (exams.csv columns) and their names.
CLASSES = (("1dAVb", "1st degree AV block"), ("RBBB", "right bundle branch block"),
           ("LBBB", "left bundle branch block"), ("SB", "sinus bradycardia"),
           ("AF", "atrial fibrillation"), ("ST", "sinus tachycardia"))
_open_parts = {}


def _part(path):
    """An open part file, kept open per process (build workers read many exams from one)."""
    import h5py

    f = _open_parts.get(path)
    if f is None:
        try:
            f = _open_parts[path] = h5py.File(path, "r")
        except OSError as exc:
            raise BadRecordError("unreadable_signal", f"{path}: {exc}") from None
    return f


class CODE15(Database):
    name = "code15"
    title = "CODE-15%"
    fold_rule = "1 + sha256(patient_id) mod 10 (patient-wise)"

    def label_rule(self, cfg):
        return "the six exams.csv label columns; an exam with none is negative for all"

    def read(self, item):
        """Row ``item.index`` of the part file, with the zero padding on both sides removed."""
        f = _part(str(item.path))
        try:
            trace = np.asarray(f["tracings"][item.index], dtype=np.float32).T   # (12, 4096)
        except (KeyError, IndexError, OSError) as exc:
            raise BadRecordError("unreadable_signal", f"{item.path}[{item.index}]: {exc}") \
                from None
        nonzero = np.flatnonzero(np.any(trace != 0, axis=0))
        if not len(nonzero):
            raise BadRecordError("empty_record", f"{item.path}[{item.index}]: all samples are "
                                 f"zero")
        trace = trace[:, nonzero[0]:nonzero[-1] + 1]
        return trace, FS, list(shards.LEADS), hashlib.sha256(trace.tobytes()).hexdigest()

    def plan(self, cfg):
        """The six labels are definitive 0/1, so an exam with none is a negative, not
        unlabelled."""
        import h5py

        source = Path(cfg.source_dir)
        exams = read_csv(source / "exams.csv", "the CODE-15 exam table")
        label_cols = [c for c, _ in CLASSES]
        missing = [c for c in ["exam_id", "patient_id", "trace_file"] + label_cols
                   if c not in exams.columns]
        if missing:
            raise ECGShardError(f"{source / 'exams.csv'} lacks the columns {missing}")
        where = {}
        for part in sorted(source.glob("exams_part*.hdf5")):
            try:
                with h5py.File(part, "r") as f:
                    ids = f["exam_id"][...]
            except (OSError, KeyError) as exc:
                raise ECGShardError(f"{part}: not a CODE-15 part file ({exc})") from None
            for i, exam in enumerate(ids):
                where[int(exam)] = (part.name, i)
        items, skipped, counts, listed = [], [], Counter(), set()
        for _, row in exams.iterrows():
            exam = int(row["exam_id"])
            listed.add(exam)
            codes = {c: 100.0 for c in label_cols
                     if str(row[c]).strip().lower() in ("true", "1")}
            found = where.get(exam)
            it = Item(record_id=str(exam), path=str(source / str(row["trace_file"])),
                      patient_id=id_text(row["patient_id"]),
                      fold=readers.fold_from_id(id_text(row["patient_id"])), source="CODE-15",
                      age=float_or(row.get("age")),
                      sex={"true": 0, "false": 1}.get(str(row.get("is_male")).strip().lower(),
                                                      -1),
                      codes=codes)
            if found is None or found[0] != str(row["trace_file"]):
                skipped.append(skip(it, "missing_signal_file",
                                    f"exam {exam} is not in {row['trace_file']}"))
                continue
            it.index = found[1]
            counts.update(list(codes))
            items.append(it)
        for exam, (part, i) in where.items():
            if exam not in listed:
                skipped.append(orphan(str(exam), f"{source / part}[{i}]", "CODE-15",
                                      "exams.csv"))
        classes = [{"code": c, "name": n, "known": True} for c, n in CLASSES]
        return {"classes": classes, "items": items, "skipped": skipped, "unknown_codes": {},
                "rate": None, "checksums": {"exams.csv": shards.sha256_file(source / "exams.csv")}}
