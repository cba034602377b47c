"""SPH, the Shandong Provincial Hospital database: ``metadata.csv`` (ECG_ID, AHA_Code,
Patient_ID, Age, Sex, N, Date), ``code.csv`` (Code, Description) and ``records/<ECG_ID>.h5``
(``ecg`` (12, N) in mV at 500 Hz, leads in the standard order)."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from .. import readers
from .. import shards
from ..errors import BadRecordError, ECGShardError
from .base import Database, Item, float_or, id_text, orphan, read_csv, skip

log = logging.getLogger(__name__)

FS = 500.0


class SPH(Database):
    name = "sph"
    title = "SPH (Shandong Provincial Hospital)"
    fold_rule = "1 + sha256(Patient_ID) mod 10 (patient-wise)"

    def label_rule(self, cfg):
        return "every primary AHA statement of AHA_Code (modifiers after '+' dropped)"

    def read(self, item):
        path = Path(item.path)
        if not path.exists():
            raise BadRecordError("missing_signal_file", f"{path} does not exist")
        import h5py

        try:
            with h5py.File(path, "r") as f:
                sig = np.asarray(f["ecg"][...], dtype=np.float32)
        except (OSError, KeyError) as exc:
            raise BadRecordError("unreadable_signal", f"{path}: {exc}") from None
        if sig.ndim != 2 or sig.shape[0] != 12:
            raise BadRecordError("missing_lead", f"{path}: ecg has shape {sig.shape}, not "
                                 f"(12, N)")
        return sig, FS, list(shards.LEADS), hashlib.sha256(sig.tobytes()).hexdigest()

    def plan(self, cfg):
        """Labels are the primary AHA statements of ``AHA_Code`` (``;``-separated; modifiers
        after ``+`` are dropped)."""
        source = Path(cfg.source_dir)
        meta = read_csv(source / "metadata.csv", "the SPH metadata table")
        table = read_csv(source / "code.csv", "the SPH AHA code table")
        for col in ("ECG_ID", "AHA_Code", "Patient_ID"):
            if col not in meta.columns:
                raise ECGShardError(f"{source / 'metadata.csv'} lacks the column {col!r}")
        names = {str(c).strip(): str(d).strip()
                 for c, d in zip(table["Code"], table["Description"])}
        items, skipped, counts, listed = [], [], Counter(), set()
        for _, row in meta.iterrows():
            rec = str(row["ECG_ID"]).strip()
            path = source / "records" / f"{rec}.h5"
            listed.add(rec)
            codes = {part.split("+")[0].strip(): 100.0
                     for part in str(row["AHA_Code"]).split(";")
                     if part.split("+")[0].strip() not in ("", "nan")}
            it = Item(record_id=rec, path=str(path), patient_id=id_text(row["Patient_ID"]),
                      fold=readers.fold_from_id(id_text(row["Patient_ID"])), source="SPH",
                      age=float_or(row.get("Age")),
                      sex={"M": 0, "F": 1}.get(str(row.get("Sex", "")).strip().upper(), -1),
                      codes=codes)
            if not path.exists():
                skipped.append(skip(it, "missing_signal_file", f"{path} listed in metadata.csv "
                                    f"does not exist"))
            elif not codes:
                skipped.append(skip(it, "no_labels", "empty AHA_Code"))
            else:
                counts.update(list(codes))
                items.append(it)
        for h5 in sorted((source / "records").glob("*.h5")):
            if h5.stem not in listed:
                skipped.append(orphan(h5.stem, h5, "SPH", "metadata.csv"))
        # Every statement of code.csv is a class; codes it lacks are kept under their code.
        classes = [{"code": c, "name": n, "known": True} for c, n in names.items()]
        classes += [{"code": c, "name": c, "known": False} for c in sorted(counts)
                    if c not in names]
        unknown = {c["code"]: counts[c["code"]] for c in classes if not c["known"]}
        if unknown:
            log.warning("AHA codes not in code.csv (kept by code): %s", unknown)
        return {"classes": classes, "items": items, "skipped": skipped,
                "unknown_codes": unknown, "rate": None,
                "checksums": {f: shards.sha256_file(source / f)
                              for f in ("metadata.csv", "code.csv")}}
