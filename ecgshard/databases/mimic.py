"""MIMIC-IV-ECG: ``record_list.csv`` (subject_id, study_id, path), ``machine_measurements.csv``
(subject_id, study_id, ``report_0`` ... ``report_17``: the machine's statements) and
``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}`` (12 leads, 500 Hz, 10 s).

Each normalised machine statement is a class whose text is the statement itself, so the text
matrix holds the report statements. Statements are normalised: lower case, surrounding dashes
of banner lines ("--- Abnormal ECG ---") and trailing punctuation removed, white space
collapsed, and a field that begins with "--" (but not "---") joined to the statement before it,
as the machine continues a long statement in the next field. Statements on fewer than
``--min-count`` records are left out of the classes and kept with their counts in the
manifest (``rare_classes``).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from .. import readers
from .. import shards
from ..errors import ECGShardError
from .. import synth
from .base import Database, Item, find, id_text, orphan, read_csv, skip

REPORT_FIELDS = tuple(f"report_{i}" for i in range(18))
# machine_measurements.csv's interval columns: milliseconds from the record's start; a value
# outside the record (the carts write 29999 for "not measured") is no measurement
TIMES = ("rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end")


def normalise_statement(text):
    """One statement as a class: 'Sinus rhythm.' and '--- SINUS RHYTHM ---' -> 'sinus rhythm'."""
    t = str(text).strip().strip("-").strip()
    t = re.sub(r"\s+", " ", t.lower())
    return re.sub(r"[\s.,;:]+$", "", t)


def machine_measurements(row):
    """The cart's measurements of one machine_measurements.csv row under ecgshard.measure's
    names (heart rate, PR, QRS, QT, QTc by Bazett, QRS axis); what the row lacks is absent."""
    def ms(name, lo=0, hi=10000):
        v = row.get(name)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if lo <= v <= hi else None

    rr, p_on, q_on = ms("rr_interval", 200, 3000), ms("p_onset"), ms("qrs_onset")
    q_end, t_end, axis = ms("qrs_end"), ms("t_end"), ms("qrs_axis", -180, 360)
    out = {}
    if rr:
        out["heart_rate"] = 60000.0 / rr
    if p_on is not None and q_on is not None and q_on > p_on:
        out["pr"] = q_on - p_on
    if q_on is not None and q_end is not None and q_end > q_on:
        out["qrs"] = q_end - q_on
    if q_on is not None and t_end is not None and t_end > q_on:
        out["qt"] = t_end - q_on
        if rr:
            out["qtc"] = out["qt"] / (rr / 1000.0) ** 0.5
    if axis is not None:
        out["qrs_axis"] = (axis + 180.0) % 360.0 - 180.0
    return out


def report_statements(fields):
    """The normalised statements of one report (its ``report_k`` fields in order), each once."""
    joined = []
    for raw in fields:
        if raw is None or raw != raw:           # missing, or NaN from the CSV
            continue
        text = str(raw).strip()
        if not text:
            continue
        if text.startswith("--") and not text.startswith("---") and joined:
            joined[-1] += " " + text[2:].strip()
        else:
            joined.append(text)
    return list(dict.fromkeys(s for s in map(normalise_statement, joined) if s))


class MIMICIVECG(Database):
    name = "mimic-iv-ecg"
    title = "MIMIC-IV-ECG"
    fold_rule = "1 + sha256(subject_id) mod 10 (patient-wise)"
    synthetic = "records"
    shipped_measurements = ("machine_measurements.csv (rr_interval, p_onset, qrs_onset, qrs_end, "
                            "t_end, qrs_axis) for heart_rate, pr, qrs, qt, qtc and qrs_axis "
                            "where the row has them; ecgshard.measure for the rest")

    def label_rule(self, cfg):
        return (f"the normalised machine statements of report_0..report_17 (case, punctuation, "
                f"banner dashes, '--' continuations joined) on at least {cfg.min_count} records; "
                f"rarer ones are listed in rare_classes")

    def write_synthetic(self, out_dir, n, seed):
        return synth.write_mimic_iv_ecg(out_dir, n_records=n, seed=seed)

    def plan(self, cfg):
        source = Path(cfg.source_dir)
        records = read_csv(source / "record_list.csv", "the MIMIC-IV-ECG record list")
        reports = read_csv(source / "machine_measurements.csv",
                           "the MIMIC-IV-ECG machine measurements (report statements)")
        for table, name, cols in ((records, "record_list.csv", ("subject_id", "study_id", "path")),
                                  (reports, "machine_measurements.csv", ("study_id",))):
            missing = [c for c in cols if c not in table.columns]
            if missing:
                raise ECGShardError(f"{source / name} lacks the columns {missing}")
        fields = [c for c in REPORT_FIELDS if c in reports.columns]
        statements, measured, twice = {}, {}, set()
        for _, row in reports.iterrows():
            study = id_text(row["study_id"])
            twice.update([study] if study in statements else [])
            statements[study] = report_statements(row[f] for f in fields)
            measured[study] = machine_measurements(row)
        items, skipped, listed = [], [], set()
        for _, row in records.iterrows():
            study, subject = id_text(row["study_id"]), id_text(row["subject_id"])
            hea = source / f"{str(row['path']).strip()}.hea"
            listed.add(hea.resolve())
            it = Item(record_id=study, path=str(hea), patient_id=subject,
                      fold=readers.fold_from_id(subject), source="MIMIC-IV-ECG",
                      age=float("nan"), sex=-1)
            if study not in statements:
                skipped.append(skip(it, "no_machine_measurements",
                                    f"study {study} has no row in machine_measurements.csv"))
            elif study in twice:
                # which row's statements are the study's cannot be told: label neither
                skipped.append(skip(it, "duplicate_study_row", f"study {study} has several "
                                    f"rows in machine_measurements.csv"))
            elif not statements[study]:
                skipped.append(skip(it, "no_labels", f"study {study}: every report field empty"))
            elif not hea.exists():
                skipped.append(skip(it, "missing_signal_file", f"{hea} listed in "
                                    f"record_list.csv does not exist"))
            else:
                it.codes = {s: 100.0 for s in statements[study]}
                it.measured = measured[study]
                items.append(it)
        for hea in find(source / "files", ".hea"):
            if hea.resolve() not in listed:
                skipped.append(orphan(hea.stem, hea, "MIMIC-IV-ECG", "record_list.csv"))
        counts = Counter(s for it in items for s in it.codes)
        kept = sorted((s for s, n in counts.items() if n >= cfg.min_count),
                      key=lambda s: (-counts[s], s))
        keep = set(kept)
        for it in items:
            # A record whose statements are all rare stays: it is a negative for every class.
            it.codes = {s: v for s, v in it.codes.items() if s in keep}
        return {"classes": [{"code": s, "name": s, "known": True} for s in kept],
                "items": items, "skipped": skipped, "unknown_codes": {},
                "rare_classes": {s: n for s, n in counts.most_common() if s not in keep},
                "rate": None,
                "checksums": {name: shards.sha256_file(source / name)
                              for name in ("record_list.csv", "machine_measurements.csv")}}
