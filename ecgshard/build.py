"""``ecgshard build``: raw PTB-XL / Challenge 2021 records -> HDF5 shards + manifest.

Plan (main process): list the records and their labels, folds and patients from the database's
own metadata, sort them deterministically and cut them into shards. Work (``--workers``
processes): each task reads, checks, resamples and filters one shard's records and writes the
shard atomically. Every record that cannot be used is a named skip in the manifest. A rerun
keeps every finished shard whose checksum and inputs still match, so an interrupted build
resumes where it stopped.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, labels, readers
from . import shards as S
from .errors import BadRecordError, ECGShardError
from .filters import FilterSpec, fit_length, preprocess

log = logging.getLogger(__name__)

FORMATS = ("ptbxl", "cinc2021", "sph", "code15")


@dataclass(frozen=True)
class BuildConfig:
    source_dir: str
    out_dir: str
    format: str = "ptbxl"
    fs: int = 100
    seconds: float = 10.0
    min_seconds: float = 5.0            # shorter records are skipped ("too_short")
    band: tuple = (0.5, 40.0)
    notch: float | None = None
    normalize: str = "mv"
    workers: int = 0                    # 0: one per CPU core
    shard_size: int = 2048
    min_likelihood: float = 0.0         # PTB-XL: statements with a lower likelihood are dropped
    ptbxl_rate: str = "auto"            # "100", "500", or auto: the folder needing no resampling
    dx_map: str | None = None           # Challenge: SNOMED table CSV(s); default the package's
    compression: str | None = None
    limit: int | None = None            # first N records only (quick looks)
    flat_leads: str = "skip"            # skip a record with a flat lead, or keep it (noted)

    @property
    def filter_spec(self):
        return FilterSpec(fs=self.fs, band=tuple(self.band) if self.band else None,
                          notch=self.notch, normalize=self.normalize)

    @property
    def n_samples(self):
        return int(round(self.fs * self.seconds))


@dataclass
class Item:
    """One record to build: where it is and what the metadata says about it."""
    record_id: str
    path: str                 # .hea (WFDB), the record's .h5 (SPH), the part file (CODE-15)
    patient_id: str
    fold: int
    source: str
    age: float
    sex: int
    codes: dict = field(default_factory=dict)     # code -> likelihood (100 where none given)
    index: int = -1           # row in a multi-record HDF5 file (CODE-15)


def run(cfg: BuildConfig):
    """Build (or resume) a shard directory; returns the manifest dict."""
    if cfg.format not in FORMATS:
        raise ECGShardError(f"--format must be one of {FORMATS}, got {cfg.format!r}")
    if cfg.normalize not in ("mv", "zscore"):
        raise ECGShardError(f"--normalize must be mv or zscore, got {cfg.normalize!r}")
    source = Path(cfg.source_dir)
    if not source.is_dir():
        raise ECGShardError(f"source directory {source} does not exist")
    if cfg.flat_leads not in ("skip", "keep"):
        raise ECGShardError("--flat-leads must be skip or keep")
    out = Path(cfg.out_dir)
    with S.exclusive_lock(out, "build"):
        return _build(cfg, source, out)


def _build(cfg, source, out):
    for stale in out.glob(".tmp-*"):
        stale.unlink()
    plan = {"ptbxl": plan_ptbxl, "cinc2021": plan_cinc2021, "sph": plan_sph,
            "code15": plan_code15}[cfg.format](cfg)
    plan["items"] = _drop_duplicate_ids(plan["items"], plan["skipped"])
    items = sorted(plan["items"], key=lambda it: (it.fold, it.source, _natural(it.record_id)))
    if cfg.limit:
        items = items[:cfg.limit]
    code_index = {c["code"]: i for i, c in enumerate(plan["classes"])}
    tasks = [items[i:i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    params = _params(cfg)

    previous = _previous_shards(out)
    results, todo = {}, []
    for index, task in enumerate(tasks):
        # The key holds the schema version (a shard of an older contract is rebuilt) and the
        # size and mtime of every source file (a repaired or rescaled record is read again).
        task_fp = S.fingerprint([S.SCHEMA_VERSION, params, [asdict(it) for it in task],
                                 [_source_identity(it) for it in task], list(code_index)])
        old = previous.get(index)
        if old and old["task_fingerprint"] == task_fp and _shard_intact(out, old):
            results[index] = old
        else:
            todo.append((index, task, task_fp))
    if results:
        log.info("resuming: %d of %d shards already built and verified", len(results), len(tasks))
    partial = {"params": params, "shards": results}
    if todo and (out / S.MANIFEST).exists():
        # The old manifest describes the old shards; beside new ones it would be believed.
        # Progress (the shards kept so far) lives in the partial manifest until the new one
        # is complete.
        S.write_json(out / S.PARTIAL_MANIFEST, partial)
        (out / S.MANIFEST).unlink()

    from tqdm.auto import tqdm

    workers = cfg.workers or os.cpu_count() or 1
    bar = tqdm(total=sum(len(t) for _, t, _ in todo), unit="rec", desc="build",
               disable=None, smoothing=0.1)
    try:
        for res in _execute(todo, cfg, code_index, workers):
            results[res["index"]] = res
            bar.update(res["n_planned"])
            S.write_json(out / S.PARTIAL_MANIFEST, partial)
    finally:
        bar.close()

    manifest = _manifest(cfg, plan, [results[i] for i in range(len(tasks))], params)
    # Which records of which database, whatever the build parameters: two shard sets of the
    # same records (e.g. built at 100 and 500 Hz) are the same dataset for fold bookkeeping.
    manifest["dataset_fingerprint"] = S.fingerprint([cfg.format,
                                                     sorted(it.record_id for it in items)])
    S.write_json(out / S.MANIFEST, manifest)
    if (out / S.PARTIAL_MANIFEST).exists():
        (out / S.PARTIAL_MANIFEST).unlink()
    return manifest


def _execute(todo, cfg, code_index, workers):
    if workers <= 1 or len(todo) <= 1:
        for index, task, task_fp in todo:
            yield build_shard(index, task, task_fp, cfg, code_index)
        return
    import multiprocessing as mp

    # fork: children inherit the compiled numba kernels and the plan without pickling it twice.
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                             mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(build_shard, index, task, task_fp, cfg, code_index)
                   for index, task, task_fp in todo]
        for future in as_completed(futures):
            yield future.result()


def build_shard(index, items, task_fp, cfg, code_index):
    """Read, check and preprocess ``items``; write ``shard-{index}.h5``. Never raises for a bad
    record: each one becomes a skip entry with its reason."""
    import hashlib

    spec = cfg.filter_spec
    n_classes = len(code_index)
    cols = {k: [] for k in S.SHARD_KEYS}
    skipped, notes = [], []
    source_digest = hashlib.sha256()
    for it in items:
        try:
            sig, length, digest = load_record(it, cfg, spec, notes)
        except BadRecordError as exc:
            skipped.append(_skip(it, exc.reason, exc.detail))
            continue
        except Exception as exc:  # a reader bug must not lose the whole build
            log.exception("unexpected error on %s", it.path)
            skipped.append(_skip(it, "unexpected_error", f"{type(exc).__name__}: {exc}"))
            continue
        source_digest.update(digest.encode())
        label = np.zeros(n_classes, np.uint8)
        likelihood = np.zeros(n_classes, np.uint8)
        mentioned = np.zeros(n_classes, np.uint8)
        for code, lik in it.codes.items():
            label[code_index[code]] = lik >= cfg.min_likelihood
            likelihood[code_index[code]] = int(round(lik))
            mentioned[code_index[code]] = 1
        for key, value in ((S.SIGNAL, sig), (S.LABELS, label), (S.LIKELIHOOD, likelihood),
                           (S.MENTIONED, mentioned),
                           (S.RECORD_ID, it.record_id), (S.PATIENT_ID, it.patient_id),
                           (S.FOLD, it.fold), (S.SOURCE, it.source), (S.AGE, it.age),
                           (S.SEX, it.sex), (S.LENGTH, length)):
            cols[key].append(value)
    res = {"index": index, "task_fingerprint": task_fp, "n_planned": len(items),
           "n_records": len(cols[S.RECORD_ID]), "skipped": skipped, "notes": notes,
           "source_sha256": source_digest.hexdigest(),
           "folds": dict(Counter(str(f) for f in cols[S.FOLD])),
           "sources": dict(Counter(cols[S.SOURCE])),
           "class_counts": [0] * n_classes, "file": None, "sha256": None}
    if cols[S.RECORD_ID]:
        arrays = {k: np.stack(v) if k in (S.SIGNAL, S.LABELS, S.LIKELIHOOD, S.MENTIONED) else v
                  for k, v in cols.items()}
        res["class_counts"] = arrays[S.LABELS].sum(axis=0, dtype=np.int64).tolist()
        res["file"] = S.shard_name(index)
        res["sha256"] = S.write_shard(Path(cfg.out_dir) / res["file"], arrays,
                                      {"fs": cfg.fs, "codes": list(code_index)},
                                      compression=cfg.compression)
    return res


def read_source(it, cfg):
    """The raw record of an Item: ``(sig (L, T) mV, fs, lead names, sha256)``."""
    if cfg.format == "sph":
        return readers.read_sph(it.path)
    if cfg.format == "code15":
        return readers.read_code15(it.path, it.index)
    sig, fs, leads, _, digest = readers.read_wfdb(it.path)
    return sig, fs, leads, digest


def load_record(it, cfg, spec, notes):
    """One record through the signal path: ``(float16 (12, T), valid length, source sha256)``.
    Records kept despite a problem (``--flat-leads keep``) are appended to ``notes``."""
    sig, fs, leads, digest = read_source(it, cfg)
    if not fs or fs <= 0:
        raise BadRecordError("bad_sampling_rate", f"{it.path}: fs={fs}")
    lead_notes = []
    sig = readers.to_canonical_leads(sig, leads, it.path, lead_notes)
    if not np.isfinite(sig).all():
        bad = [S.LEADS[i] for i in np.flatnonzero(~np.isfinite(sig).all(axis=1))]
        raise BadRecordError("nan_values", f"{it.path}: non-finite samples in {bad}")
    seconds = sig.shape[1] / fs
    if seconds < cfg.min_seconds:
        raise BadRecordError("too_short", f"{it.path}: {seconds:.2f} s < {cfg.min_seconds} s")
    flat = np.flatnonzero(np.ptp(sig, axis=1) < 1e-3)
    if len(flat):
        detail = f"{it.path}: no signal in {[S.LEADS[i] for i in flat]}"
        if cfg.flat_leads == "skip":
            raise BadRecordError("flat_lead", detail)
        notes.append(_skip(it, "flat_lead_kept", detail))
    if seconds > cfg.seconds * 1.5:
        # Long records (PTB's 2-minute ones): cut the central window first, with a margin for
        # the filters, so that resampling and filtering work on what is kept.
        keep = int(round((cfg.seconds + 4.0) * fs))
        start = (sig.shape[1] - keep) // 2
        sig = sig[:, start:start + keep]
    x = preprocess(sig, fs, spec)
    x, length = fit_length(x, cfg.n_samples)
    if not np.isfinite(x).all() or np.abs(x).max() > 6e4:
        raise BadRecordError("out_of_range", f"{it.path}: values beyond float16 after filtering")
    notes.extend(_skip(it, reason, detail) for reason, detail in lead_notes)
    return x.astype(np.float16), length, digest


def _find(root, suffix):
    """Files under ``root`` ending in ``suffix``, symlinked folders followed (a dataset is often
    assembled from links), each real folder once."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        # A folder named like a record file is listed too: reading it becomes a named skip.
        found += [Path(folder) / f for f in files + dirs if f.endswith(suffix)]
    return sorted(found)


def _read_header_text(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise BadRecordError("unreadable_header", f"{path}: {exc.strerror or exc}") from None


def _drop_duplicate_ids(items, skipped):
    """The first record of each id; later ones become ``duplicate_record_id`` skips. One ECG
    listed twice could land in a training and a test fold at once."""
    first, kept = {}, []
    for it in items:
        if it.record_id in first:
            skipped.append(_skip(it, "duplicate_record_id",
                                 f"record id {it.record_id} also at {first[it.record_id]}"))
        else:
            first[it.record_id] = it.path
            kept.append(it)
    return kept


def _source_identity(it):
    """(name, size, mtime_ns) of a record's files: its header or table row's file, and the
    signal files beside it with the same stem."""
    path = Path(it.path)
    files = [path] + [path.with_suffix(ext) for ext in (".dat", ".mat")
                      if path.suffix == ".hea"]
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([f.name, None, None])
    return out


def _skip(it, reason, detail=""):
    return {"record_id": it.record_id, "path": str(it.path), "source": it.source,
            "reason": reason, "detail": detail}


def _orphan(record_id, path, source, table):
    """A signal on disk that its database's metadata table does not list."""
    return {"record_id": record_id, "path": str(path), "source": source,
            "reason": "no_metadata_row", "detail": f"signal has no row in {table}"}


# ---------------------------------------------------------------- plans

def plan_ptbxl(cfg):
    source = Path(cfg.source_dir)
    db, scp = readers.load_ptbxl_tables(source)
    classes = labels.ptbxl_vocabulary(scp)
    known = {c["code"] for c in classes}
    rate = _ptbxl_rate(cfg, source)
    column = "filename_lr" if rate == 100 else "filename_hr"
    items, skipped, listed = [], [], set()
    unknown = Counter()
    for ecg_id, row in db.iterrows():
        rec_path = source / f"{row[column]}.hea"
        listed.add(rec_path.resolve())
        rec_id = str(ecg_id)
        it = Item(record_id=rec_id, path=str(rec_path), patient_id=_id_text(row["patient_id"]),
                  fold=readers.parse_fold(row["strat_fold"]) or 0, source="PTB-XL",
                  age=_float_or(row.get("age")), sex=_int_or(row.get("sex"), -1))
        try:
            statements = readers.parse_scp_codes(row["scp_codes"], f"ecg_id {ecg_id}")
        except BadRecordError as exc:
            skipped.append(_skip(it, exc.reason, exc.detail))
            continue
        # Every statement is kept with its likelihood: the shard's labels hold those at or
        # above --min-likelihood, and the rest still exclude a record when held out.
        for code, lik in statements.items():
            if code not in known:
                unknown[code] += 1
            else:
                it.codes[code] = lik
        if not rec_path.exists():
            skipped.append(_skip(it, "missing_record_file", f"{rec_path} listed in "
                                 f"ptbxl_database.csv does not exist"))
        elif not 1 <= it.fold <= 10:
            skipped.append(_skip(it, "no_fold", f"strat_fold={row['strat_fold']!r}"))
        elif not any(lik >= cfg.min_likelihood for lik in it.codes.values()):
            skipped.append(_skip(it, "no_labels", f"no statement at likelihood >= "
                                 f"{cfg.min_likelihood}"))
        else:
            items.append(it)
    n_missing = sum(s["reason"] == "missing_record_file" for s in skipped)
    if n_missing:
        log.warning("%d of %d records listed in ptbxl_database.csv are missing from records%d/: "
                    "the directory is not a complete database. `ecgshard download ptbxl %s "
                    "--rate %d` completes it (it resumes and verifies checksums)", n_missing,
                    len(db), rate, source, rate)
    if unknown:
        log.warning("%d statements in ptbxl_database.csv are not in scp_statements.csv and were "
                    "ignored: %s", sum(unknown.values()), dict(unknown))
    records_dir = source / f"records{rate}"
    for hea in _find(records_dir, ".hea"):
        if hea.resolve() not in listed:
            skipped.append(_orphan(hea.stem, hea, "PTB-XL", "ptbxl_database.csv"))
    if not items and not skipped:
        raise ECGShardError(f"{source}: ptbxl_database.csv lists no records")
    return {"classes": classes, "items": items, "skipped": skipped,
            "unknown_codes": dict(unknown), "rate": rate,
            "checksums": {f: S.sha256_file(source / f) for f in readers.PTBXL_FILES}}


def _ptbxl_rate(cfg, source):
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


def plan_cinc2021(cfg):
    source = Path(cfg.source_dir)
    table = labels.snomed_table(cfg.dx_map)
    heas = _find(source, ".hea")
    if not heas:
        raise ECGShardError(f"{source} holds no WFDB .hea files; point --format cinc2021 at the "
                            f"Challenge 2021 training/ folder (or one source inside it), which "
                            f"`ecgshard download cinc2021 DEST` fetches")
    items, skipped = [], []
    counts, unknown = Counter(), Counter()
    for hea in heas:
        name = hea.stem
        src = readers.record_source_from_name(name, hea.parent.parent.name)
        it = Item(record_id=name, path=str(hea), patient_id=name, fold=readers.fold_from_id(name),
                  source=src, age=float("nan"), sex=-1)
        try:
            hdr = readers.parse_header(_read_header_text(hea), hea)
        except BadRecordError as exc:
            skipped.append(_skip(it, exc.reason, exc.detail))
            continue
        it.age = _float_or(hdr.comments.get("Age"))
        it.sex = {"male": 0, "m": 0, "female": 1, "f": 1}.get(
            hdr.comments.get("Sex", "").strip().lower(), -1)
        dx = [c.strip() for c in hdr.comments.get("Dx", "").split(",") if c.strip()]
        if not dx:
            skipped.append(_skip(it, "no_labels", "header has no #Dx codes"))
            continue
        it.codes = {c: 100.0 for c in dx}
        counts.update(list(it.codes))
        unknown.update(c for c in it.codes if c not in table)
        items.append(it)
    with_header = {h.with_suffix(".mat") for h in heas}
    for mat in _find(source, ".mat"):
        if mat not in with_header:
            skipped.append({"record_id": mat.stem, "path": str(mat),
                            "source": readers.record_source_from_name(mat.stem,
                                                                      mat.parent.parent.name),
                            "reason": "no_header", "detail": f"{mat} has no .hea beside it"})
    if unknown:
        log.warning("%d labels use %d SNOMED codes that are not in the code table (kept, named by "
                    "their code): %s", sum(unknown.values()), len(unknown),
                    dict(unknown.most_common(10)))
    classes = labels.snomed_vocabulary(table, counts)
    checksums = {}
    if cfg.dx_map:
        checksums = {p: S.sha256_file(p) for p in str(cfg.dx_map).split(",")}
    return {"classes": classes, "items": items, "skipped": skipped,
            "unknown_codes": dict(unknown), "rate": None, "checksums": checksums}


def _read_csv(path, what):
    import pandas as pd

    if not Path(path).exists():
        raise ECGShardError(f"{path} does not exist: {what}")
    return pd.read_csv(path)


def _coded_vocabulary(names, counts, unknown_note):
    """Classes of a dataset with its own code table: every table entry, then unknown codes."""
    classes = [{"code": c, "name": n, "known": True} for c, n in names.items()]
    classes += [{"code": c, "name": c, "known": False} for c in sorted(counts)
                if c not in names]
    if any(not c["known"] for c in classes):
        log.warning("%s: %s", unknown_note, {c["code"]: counts[c["code"]] for c in classes
                                             if not c["known"]})
    return classes


def plan_sph(cfg):
    """SPH (Shandong): ``metadata.csv`` (ECG_ID, AHA_Code, Patient_ID, Age, Sex, N, Date),
    ``code.csv`` (Code, Description) and ``records/<ECG_ID>.h5``. Labels are the primary AHA
    statements of ``AHA_Code`` (``;``-separated; modifiers after ``+`` are dropped)."""
    source = Path(cfg.source_dir)
    meta = _read_csv(source / "metadata.csv", "the SPH metadata table")
    table = _read_csv(source / "code.csv", "the SPH AHA code table")
    for col in ("ECG_ID", "AHA_Code", "Patient_ID"):
        if col not in meta.columns:
            raise ECGShardError(f"{source / 'metadata.csv'} lacks the column {col!r}")
    names = {str(c).strip(): str(d).strip() for c, d in zip(table["Code"], table["Description"])}
    items, skipped, counts, listed = [], [], Counter(), set()
    for _, row in meta.iterrows():
        rec = str(row["ECG_ID"]).strip()
        path = source / "records" / f"{rec}.h5"
        listed.add(rec)
        codes = {part.split("+")[0].strip(): 100.0 for part in str(row["AHA_Code"]).split(";")
                 if part.split("+")[0].strip() not in ("", "nan")}
        it = Item(record_id=rec, path=str(path), patient_id=_id_text(row["Patient_ID"]),
                  fold=readers.fold_from_id(_id_text(row["Patient_ID"])), source="SPH",
                  age=_float_or(row.get("Age")),
                  sex={"M": 0, "F": 1}.get(str(row.get("Sex", "")).strip().upper(), -1),
                  codes=codes)
        if not path.exists():
            skipped.append(_skip(it, "missing_signal_file", f"{path} listed in metadata.csv "
                                 f"does not exist"))
        elif not codes:
            skipped.append(_skip(it, "no_labels", "empty AHA_Code"))
        else:
            counts.update(list(codes))
            items.append(it)
    for h5 in sorted((source / "records").glob("*.h5")):
        if h5.stem not in listed:
            skipped.append(_orphan(h5.stem, h5, "SPH", "metadata.csv"))
    classes = _coded_vocabulary(names, counts, "AHA codes not in code.csv (kept by code)")
    return {"classes": classes, "items": items, "skipped": skipped,
            "unknown_codes": {c["code"]: counts[c["code"]] for c in classes if not c["known"]},
            "rate": None, "checksums": {f: S.sha256_file(source / f)
                                        for f in ("metadata.csv", "code.csv")}}


def plan_code15(cfg):
    """CODE-15%: ``exams.csv`` (exam_id, patient_id, age, is_male, the six label columns,
    trace_file) and ``exams_part*.hdf5`` (``tracings`` (N, 4096, 12), ``exam_id`` (N,)).
    The six labels are definitive 0/1, so an exam with none is a negative, not unlabelled."""
    import h5py

    source = Path(cfg.source_dir)
    exams = _read_csv(source / "exams.csv", "the CODE-15 exam table")
    label_cols = [c for c, _ in readers.CODE15_CLASSES]
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
        codes = {c: 100.0 for c in label_cols if str(row[c]).strip().lower() in ("true", "1")}
        found = where.get(exam)
        it = Item(record_id=str(exam), path=str(source / str(row["trace_file"])),
                  patient_id=_id_text(row["patient_id"]),
                  fold=readers.fold_from_id(_id_text(row["patient_id"])), source="CODE-15",
                  age=_float_or(row.get("age")),
                  sex={"true": 0, "false": 1}.get(str(row.get("is_male")).strip().lower(), -1),
                  codes=codes)
        if found is None or found[0] != str(row["trace_file"]):
            skipped.append(_skip(it, "missing_signal_file",
                                 f"exam {exam} is not in {row['trace_file']}"))
            continue
        it.index = found[1]
        counts.update(list(codes))
        items.append(it)
    for exam, (part, i) in where.items():
        if exam not in listed:
            skipped.append(_orphan(str(exam), f"{source / part}[{i}]", "CODE-15", "exams.csv"))
    classes = [{"code": c, "name": n, "known": True} for c, n in readers.CODE15_CLASSES]
    return {"classes": classes, "items": items, "skipped": skipped, "unknown_codes": {},
            "rate": None, "checksums": {"exams.csv": S.sha256_file(source / "exams.csv")}}


# ---------------------------------------------------------------- manifest and resume

def _params(cfg):
    p = asdict(cfg)
    p.pop("out_dir")
    p.pop("workers")
    p["band"] = list(cfg.band) if cfg.band else None
    p["filter"] = asdict(cfg.filter_spec)
    p["filter"]["design"] = "Butterworth SOS, zero-phase (forward-backward), numba kernel"
    p["resampling"] = "scipy.signal.resample_poly (polyphase, Kaiser anti-aliasing)"
    p["length_rule"] = ("central window of `seconds`; shorter records zero-padded at the end, "
                        "valid length stored")
    p["label_rule"] = {
        "ptbxl": f"a statement is a label when present with likelihood >= {cfg.min_likelihood}",
        "cinc2021": "every SNOMED CT code in #Dx is a label",
        "sph": "every primary AHA statement of AHA_Code (modifiers after '+' dropped)",
        "code15": "the six exams.csv label columns; an exam with none is negative for all"}[
            cfg.format]
    p["fold_rule"] = {
        "ptbxl": "PTB-XL strat_fold (patient-wise)",
        "cinc2021": "1 + sha256(record name) mod 10 (Challenge headers carry no patient id)",
        "sph": "1 + sha256(Patient_ID) mod 10 (patient-wise)",
        "code15": "1 + sha256(patient_id) mod 10 (patient-wise)"}[cfg.format]
    return p


def _previous_shards(out):
    for name in (S.PARTIAL_MANIFEST, S.MANIFEST):
        path = out / name
        if path.exists():
            import json

            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            shards = data.get("shards", {})
            if isinstance(shards, list):
                shards = {s["index"]: s for s in shards if "index" in s}
            return {int(k): v for k, v in shards.items()}
    return {}


def _shard_intact(out, entry):
    if entry.get("file") is None:
        return entry.get("n_records", 0) == 0
    path = out / entry["file"]
    return path.exists() and S.sha256_file(path) == entry["sha256"]


def _manifest(cfg, plan, results, params):
    classes = [dict(c) for c in plan["classes"]]
    totals = np.zeros(len(classes), np.int64)
    for res in results:
        totals += np.asarray(res["class_counts"], np.int64)
    for c, n in zip(classes, totals):
        c["count"] = int(n)
    skipped = list(plan["skipped"]) + [s for res in results for s in res["skipped"]]
    folds = Counter()
    for res in results:
        folds.update({int(k): v for k, v in res["folds"].items()})
    n_records = sum(r["n_records"] for r in results)
    shards = [r for r in results if r["file"]]
    return {
        "schema_version": S.SCHEMA_VERSION,
        "created_by": f"ecgshard {__version__}",
        "format": cfg.format,
        "source_dir": str(Path(cfg.source_dir).resolve()),
        "params": params,
        "fs": cfg.fs,
        "n_samples": cfg.n_samples,
        "leads": list(S.LEADS),
        "ptbxl_rate": plan["rate"],
        "source_checksums": plan["checksums"],
        "classes": classes,
        "unknown_codes": plan["unknown_codes"],
        "n_records": n_records,
        "n_skipped": len(skipped),
        "skip_counts": dict(Counter(s["reason"] for s in skipped)),
        "skipped": skipped,
        "kept_with_notes": [n for res in results for n in res.get("notes", [])],
        "folds": {str(k): folds[k] for k in sorted(folds)},
        "sources": dict(sum((Counter(r["sources"]) for r in results), Counter())),
        "shards": [{k: r[k] for k in ("index", "file", "sha256", "n_records", "folds",
                                      "source_sha256", "task_fingerprint", "n_planned", "sources",
                                      "class_counts", "skipped", "notes")} for r in shards],
        "fingerprint": S.fingerprint([params, [r["sha256"] for r in shards]]),
    }


def summary_lines(manifest):
    lines = [f"{manifest['n_records']} records in {len(manifest['shards'])} shards "
             f"({manifest['format']}, {manifest['fs']} Hz x {manifest['n_samples']} samples), "
             f"{manifest['n_skipped']} skipped"]
    for reason, n in sorted(manifest["skip_counts"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  skipped {n:6d}  {reason}")
    lines.append("  folds: " + ", ".join(f"{k}:{v}" for k, v in manifest["folds"].items()))
    lines.append("  sources: " + ", ".join(f"{k}:{v}" for k, v in manifest["sources"].items()))
    present = [c for c in manifest["classes"] if c["count"]]
    lines.append(f"  classes: {len(present)} with records (of {len(manifest['classes'])} in the "
                 f"vocabulary)")
    for c in sorted(present, key=lambda c: -c["count"])[:15]:
        lines.append(f"    {c['code']:>14}  {c['count']:6d}  {c['name']}")
    if manifest.get("kept_with_notes"):
        lines.append(f"  kept with notes: {len(manifest['kept_with_notes'])} "
                     f"({dict(Counter(n['reason'] for n in manifest['kept_with_notes']))})")
    if manifest.get("unknown_codes"):
        lines.append(f"  codes not in the code table: {manifest['unknown_codes']}")
    return lines


def inspect(shard_dir, verify=False):
    """``ecgshard inspect``: the manifest summary, one line each; with ``verify`` every shard's
    bytes are hashed against the manifest (a mismatch raises, naming the shard)."""
    manifest = S.load_manifest(shard_dir)
    lines = summary_lines(manifest)
    if verify:
        for path, sha256 in S.shard_checksums(shard_dir, manifest).items():
            S.verify_shard(path, sha256, full=True)
        lines.append(f"verified: all {len(manifest['shards'])} shards match their checksums")
    return lines


def _natural(name):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else 0, name)


def _id_text(value):
    try:
        f = float(value)
        return str(int(f)) if f == int(f) else str(value)
    except (TypeError, ValueError):
        return str(value)


def _int_or(value, default):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _float_or(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
