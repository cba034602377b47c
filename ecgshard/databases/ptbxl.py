"""PTB-XL 1.0.3 (PhysioNet): ``ptbxl_database.csv`` (one row per ECG: ``scp_codes`` with
likelihoods, ``strat_fold``, ``patient_id``, ``filename_lr``/``filename_hr``),
``scp_statements.csv`` (the 71 SCP statements) and ``records100/`` / ``records500/`` WFDB files."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from .. import labels
from .. import shards
from ..errors import BadRecordError, ECGShardError
from .. import synth
from .base import Database, Item, find, float_or, id_text, int_or, orphan, skip

log = logging.getLogger(__name__)

FILES = ("ptbxl_database.csv", "scp_statements.csv")


def check_dir(source_dir):
    source_dir = Path(source_dir)
    missing = [f for f in FILES if not (source_dir / f).exists()]
    if missing:
        raise ECGShardError(
            f"{source_dir} is not a PTB-XL directory: {', '.join(missing)} missing. Get PTB-XL "
            f"1.0.3 with `ecgshard download ptbxl DEST` (checksum-verified, resumable) and "
            f"point `ecgshard build` at DEST, the folder that holds ptbxl_database.csv")
    return source_dir


def load_tables(source_dir):
    """The two PTB-XL CSVs as pandas frames (``scp_codes`` stays text: each record parses
    its own, so one malformed cell is one skip)."""
    import pandas as pd

    source_dir = check_dir(source_dir)
    table = source_dir / "ptbxl_database.csv"
    try:
        db = pd.read_csv(table)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ECGShardError(f"{table} cannot be read as a CSV table ({exc}); restore it with "
                            f"`ecgshard download ptbxl {source_dir}` (it verifies checksums)") \
            from None
    for col in ("ecg_id", "scp_codes", "strat_fold", "patient_id", "filename_lr", "filename_hr"):
        if col not in db.columns:
            raise ECGShardError(f"{table} lacks the column {col!r}")
    db = db.set_index("ecg_id")
    scp = pd.read_csv(source_dir / "scp_statements.csv", index_col=0)
    return db, scp


def parse_scp_codes(cell, where=""):
    """A ``scp_codes`` cell (``"{'NORM': 100.0, 'SR': 0.0}"``) -> {statement: likelihood}; a cell
    that is not such a dict literal is a bad record, not a failed build."""
    import ast

    try:
        codes = ast.literal_eval(str(cell))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise BadRecordError("bad_metadata", f"{where}: scp_codes {str(cell)[:60]!r} is not a "
                             f"dict literal") from None
    if not isinstance(codes, dict):
        raise BadRecordError("bad_metadata", f"{where}: scp_codes is a "
                             f"{type(codes).__name__}, not a dict")
    out = {}
    for code, lik in codes.items():
        try:
            lik = float(lik)
        except (TypeError, ValueError):
            raise BadRecordError("bad_metadata", f"{where}: likelihood of {code!r} is "
                                 f"{lik!r}") from None
        if not (isinstance(code, str) and 0 <= lik <= 100):
            raise BadRecordError("bad_metadata", f"{where}: {code!r}: {lik} is no statement "
                                 f"with a likelihood in 0-100")
        out[code] = lik
    return out


def parse_fold(value):
    """A fold 1..10, or None for anything else (3.7 is no fold, not fold 3)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f == int(f) and 1 <= f <= 10 else None


class PTBXL(Database):
    name = "ptbxl"
    title = "PTB-XL"
    fold_rule = "PTB-XL strat_fold (patient-wise)"
    download_url = "https://physionet.org/files/ptb-xl/{version}/"
    download_version = "1.0.3"
    synthetic = "records"

    def label_rule(self, cfg):
        return f"a statement is a label when present with likelihood >= {cfg.min_likelihood}"

    def wanted(self, path, cfg):
        folder = path.split("/")[0]
        if folder.startswith("records"):
            return cfg.rate == "all" or folder == f"records{cfg.rate}"
        return True

    def write_synthetic(self, out_dir, n, seed):
        return synth.write_ptbxl(out_dir, n_records=n, seed=seed)

    def plan(self, cfg):
        source = Path(cfg.source_dir)
        db, scp = load_tables(source)
        classes = labels.ptbxl_vocabulary(scp)
        known = {c["code"] for c in classes}
        rate = records_rate(cfg, source)
        column = "filename_lr" if rate == 100 else "filename_hr"
        items, skipped, listed = [], [], set()
        unknown = Counter()
        for ecg_id, row in db.iterrows():
            rec_path = source / f"{row[column]}.hea"
            listed.add(rec_path.resolve())
            it = Item(record_id=str(ecg_id), path=str(rec_path),
                      patient_id=id_text(row["patient_id"]),
                      fold=parse_fold(row["strat_fold"]) or 0, source="PTB-XL",
                      age=float_or(row.get("age")), sex=int_or(row.get("sex"), -1))
            try:
                statements = parse_scp_codes(row["scp_codes"], f"ecg_id {ecg_id}")
            except BadRecordError as exc:
                skipped.append(skip(it, exc.reason, exc.detail))
                continue
            # Every statement is kept with its likelihood: the shard's labels hold those at or
            # above --min-likelihood, and the rest still exclude a record when held out.
            for code, lik in statements.items():
                if code not in known:
                    unknown[code] += 1
                else:
                    it.codes[code] = lik
            if not rec_path.exists():
                skipped.append(skip(it, "missing_record_file", f"{rec_path} listed in "
                                    f"ptbxl_database.csv does not exist"))
            elif not 1 <= it.fold <= 10:
                skipped.append(skip(it, "no_fold", f"strat_fold={row['strat_fold']!r}"))
            elif not any(lik >= cfg.min_likelihood for lik in it.codes.values()):
                skipped.append(skip(it, "no_labels", f"no statement at likelihood >= "
                                    f"{cfg.min_likelihood}"))
            else:
                items.append(it)
        n_missing = sum(s["reason"] == "missing_record_file" for s in skipped)
        if n_missing:
            log.warning("%d of %d records listed in ptbxl_database.csv are missing from "
                        "records%d/: the directory is not a complete database. `ecgshard "
                        "download ptbxl %s --rate %d` completes it (it resumes and verifies "
                        "checksums)", n_missing, len(db), rate, source, rate)
        if unknown:
            log.warning("%d statements in ptbxl_database.csv are not in scp_statements.csv and "
                        "were ignored: %s", sum(unknown.values()), dict(unknown))
        for hea in find(source / f"records{rate}", ".hea"):
            if hea.resolve() not in listed:
                skipped.append(orphan(hea.stem, hea, "PTB-XL", "ptbxl_database.csv"))
        if not items and not skipped:
            raise ECGShardError(f"{source}: ptbxl_database.csv lists no records")
        return {"classes": classes, "items": items, "skipped": skipped,
                "unknown_codes": dict(unknown), "rate": rate,
                "checksums": {f: shards.sha256_file(source / f) for f in FILES}}


def records_rate(cfg, source):
    """The records folder to read: --ptbxl-rate, or the one needing no resampling, else 500."""
    if cfg.ptbxl_rate in ("100", "500"):
        rate = int(cfg.ptbxl_rate)
    else:
        have = [r for r in (100, 500) if (source / f"records{r}").is_dir()]
        if not have:
            raise ECGShardError(f"{source} has neither records100/ nor records500/; get them "
                                f"with `ecgshard download ptbxl {source} --rate 100` (or 500)")
        # The rate that needs no resampling, else the higher one (resampling down is exact).
        rate = cfg.fs if cfg.fs in have else max(have)
    if not (source / f"records{rate}").is_dir():
        raise ECGShardError(f"{source / f'records{rate}'} does not exist")
    return rate
