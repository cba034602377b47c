"""``ecgshard build``: raw records of any registered database -> HDF5 shards + manifest.

Plan (main process): the database (``ecgshard.databases``) lists the records and their labels,
folds and patients from its own metadata; they are sorted deterministically and cut into
shards. Work (``--workers`` processes): each task reads, checks, resamples and filters one
shard's records and writes the shard atomically. Every record that cannot be used is a named
skip in the manifest. A rerun keeps every finished shard whose checksum and inputs still match,
so an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import importlib
import logging
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import __version__, databases, measure
from . import shards
from .databases.base import skip
from .config import BuildConfig
from .errors import BadRecordError, ECGShardError
from .signal import SignalPath

log = logging.getLogger(__name__)

def run(cfg: BuildConfig):
    """Build (or resume) a shard directory; returns the manifest dict."""
    database = databases.get(cfg.format)
    source = Path(cfg.source_dir)
    if not source.is_dir():
        raise ECGShardError(f"source directory {source} does not exist")
    # One directory, one fingerprint: spelled relative to another working directory or through
    # a link, the same records would otherwise be rebuilt, and every run on them trained anew.
    cfg = replace(cfg, source_dir=str(source.resolve()))
    out = Path(cfg.out_dir)
    with shards.exclusive_lock(out, "build"):
        return _build(cfg, database, out)


def _build(cfg, database, out):
    for stale in out.glob(".tmp-*"):
        stale.unlink()
    plan = database.plan(cfg)
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
        task_fp = shards.fingerprint([shards.SCHEMA_VERSION, params, [asdict(it) for it in task],
                                 [_source_identity(it) for it in task], list(code_index)])
        old = previous.get(index)
        if old and old["task_fingerprint"] == task_fp and _shard_intact(out, old):
            results[index] = old
        else:
            todo.append((index, task, task_fp))
    if results:
        log.info("resuming: %d of %d shards already built and verified", len(results), len(tasks))
    partial = {"params": params, "shards": results}
    if todo and (out / shards.MANIFEST).exists():
        # The old manifest describes the old shards; beside new ones it would be believed.
        # Progress (the shards kept so far) lives in the partial manifest until the new one
        # is complete.
        shards.write_json(out / shards.PARTIAL_MANIFEST, partial)
        (out / shards.MANIFEST).unlink()

    from tqdm.auto import tqdm

    workers = cfg.workers or os.cpu_count() or 1
    bar = tqdm(total=sum(len(t) for _, t, _ in todo), unit="rec", desc="build",
               disable=None, smoothing=0.1)
    try:
        for res in _execute(todo, cfg, code_index, workers, bar):
            results[res["index"]] = res
            shards.write_json(out / shards.PARTIAL_MANIFEST, partial)
    finally:
        bar.close()

    manifest = _manifest(cfg, plan, [results[i] for i in range(len(tasks))], params)
    # Which records of which database, whatever the build parameters: two shard sets of the
    # same records (e.g. built at 100 and 500 Hz) are the same dataset for fold bookkeeping.
    manifest["dataset_fingerprint"] = shards.fingerprint([cfg.format,
                                                     sorted(it.record_id for it in items)])
    shards.write_json(out / shards.MANIFEST, manifest)
    if (out / shards.PARTIAL_MANIFEST).exists():
        (out / shards.PARTIAL_MANIFEST).unlink()
    # shards of an earlier, larger build of this directory: no manifest lists them
    listed = {s["file"] for s in manifest["shards"]}
    orphans = [p for p in out.glob(shards.SHARD_GLOB)
               if p.name not in listed]
    for orphan in orphans:
        orphan.unlink()
    if orphans:
        log.info("removed %d shard files of an earlier build that this one does not list",
                 len(orphans))
    return manifest


def _execute(todo, cfg, code_index, workers, bar):
    """Build the shards of ``todo``, yielding each result as it is done; ``bar`` moves record
    by record (a shard of 2,048 records takes 20 s), in workers through a shared counter."""
    global _advance
    if workers <= 1 or len(todo) <= 1:
        def one():
            bar.update(1)

        _advance = one
        try:
            for index, task, task_fp in todo:
                yield build_shard(index, task, task_fp, cfg, code_index)
        finally:
            _advance = _no_progress
        return
    import multiprocessing as mp

    done = mp.get_context("fork").Value("l", 0)

    def count():
        with done.get_lock():
            done.value += 1

    _advance = count                                # the forked workers inherit it
    try:
        with _worker_pool(min(workers, len(todo)), cfg.measure) as pool:
            pending = {pool.submit(build_shard, index, task, task_fp, cfg, code_index)
                       for index, task, task_fp in todo}
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                bar.update(done.value - bar.n)
                for future in finished:
                    yield future.result()
    finally:
        _advance = _no_progress


def _no_progress():
    pass


_advance = _no_progress                             # called once per record a shard reads


def _worker_pool(workers, measuring):
    """The worker processes of a build or a measure: forked (children inherit the compiled
    numba kernels and the plan without pickling it twice), dying with their parent, and with
    neurokit2 imported once before the fork when they measure (2 s a worker otherwise;
    performance.md)."""
    import multiprocessing as mp

    if measuring:
        importlib.import_module("neurokit2")
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))


def _die_with_parent(parent):
    """A worker whose build is killed (kill -9) must not live on writing shards and holding
    the directory's lock (inherited across fork): the kernel kills it with its parent
    (Linux), else a watchdog thread ends it once the parent is gone."""
    import ctypes
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:               # the parent died before prctl took hold
            os._exit(1)
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def build_shard(index, items, task_fp, cfg, code_index):
    """Read, check and preprocess ``items``; write ``shard-{index}.h5``. Never raises for a bad
    record: each one becomes a skip entry with its reason."""
    import hashlib

    path = cfg.signal_path
    n_classes = len(code_index)
    cols = {k: [] for k in shards.SHARD_KEYS}
    skipped, notes = [], []
    source_digest = hashlib.sha256()
    measured, unmeasured = [], []
    for it in items:
        _advance()
        try:
            sig, length, digest, values = load_record(it, cfg, path, notes, unmeasured)
        except BadRecordError as exc:
            skipped.append(skip(it, exc.reason, exc.detail))
            continue
        except Exception as exc:  # a reader bug must not lose the whole build
            log.exception("unexpected error on %s", it.path)
            skipped.append(skip(it, "unexpected_error", f"{type(exc).__name__}: {exc}"))
            continue
        source_digest.update(digest.encode())
        measured.append(values)
        label = np.zeros(n_classes, np.uint8)
        likelihood = np.zeros(n_classes, np.uint8)
        mentioned = np.zeros(n_classes, np.uint8)
        for code, lik in it.codes.items():
            label[code_index[code]] = lik >= cfg.min_likelihood
            likelihood[code_index[code]] = int(round(lik))
            mentioned[code_index[code]] = 1
        for key, value in ((shards.SIGNAL, sig), (shards.LABELS, label),
                           (shards.LIKELIHOOD, likelihood), (shards.MENTIONED, mentioned),
                           (shards.RECORD_ID, it.record_id), (shards.PATIENT_ID, it.patient_id),
                           (shards.FOLD, it.fold), (shards.SOURCE, it.source), (shards.AGE, it.age),
                           (shards.SEX, it.sex), (shards.LENGTH, length)):
            cols[key].append(value)
    res = {"index": index, "task_fingerprint": task_fp, "n_planned": len(items),
           "n_records": len(cols[shards.RECORD_ID]), "skipped": skipped, "notes": notes,
           "source_sha256": source_digest.hexdigest(),
           "folds": dict(Counter(str(f) for f in cols[shards.FOLD])),
           "sources": dict(Counter(cols[shards.SOURCE])),
           "class_counts": [0] * n_classes, "file": None, "sha256": None,
           "not_measurable": measure.count_reasons(unmeasured) if cfg.measure else None}
    if cols[shards.RECORD_ID]:
        stacked = (shards.SIGNAL, shards.LABELS, shards.LIKELIHOOD, shards.MENTIONED)
        arrays = {k: np.stack(v) if k in stacked else v for k, v in cols.items()}
        res["class_counts"] = arrays[shards.LABELS].sum(axis=0, dtype=np.int64).tolist()
        res["file"] = shards.shard_name(index)
        attrs = {"fs": cfg.fs, "codes": list(code_index)}
        if cfg.measure:
            arrays[shards.MEASUREMENTS] = np.stack(measured)
            attrs.update(measurement_names=list(measure.NAMES),
                         measurements_version=measure.VERSION)
        res["sha256"] = shards.write_shard(Path(cfg.out_dir) / res["file"], arrays, attrs,
                                           compression=cfg.compression)
    return res


def load_record(it, cfg, path, notes, unmeasured):
    """One record through the signal path: ``(float16 (12, T), valid length, source sha256,
    measurements or None)``, measured from the record as read, before any filter or
    normalisation. Records kept despite a problem (``--flat-leads keep``) are appended to
    ``notes``; what could not be measured, and why, to ``unmeasured``."""
    sig, fs, leads, digest = databases.get(cfg.format).read(it)
    x, length, kept = path.process(sig, fs, leads, it.path, cfg.flat_leads, cfg.min_seconds)
    notes.extend(skip(it, reason, detail) for reason, detail in kept)
    values = None
    if cfg.measure:
        values, reasons = measure.measure_record(sig, fs, leads, path.seconds, it.path)
        for name, value in it.measured.items():     # the source's own, where it ships them
            values[measure.INDEX[name]] = value
            reasons.pop(name, None)
        unmeasured.append(reasons)
    return x, length, digest, values


def _drop_duplicate_ids(items, skipped):
    """The first record of each id and of each file (row, for multi-record files); later ones
    become ``duplicate_record_id`` / ``duplicate_record_file`` skips. One ECG listed twice,
    under one id or under two ids pointing at one file, could land in a training and a test
    fold at once."""
    first, files, kept = {}, {}, []
    for it in items:
        where = (str(Path(it.path).resolve()), it.index)
        if it.record_id in first:
            skipped.append(skip(it, "duplicate_record_id",
                                f"record id {it.record_id} also at {first[it.record_id]}"))
        elif where in files:
            skipped.append(skip(it, "duplicate_record_file",
                                f"{it.path} is also record {files[where]}"))
        else:
            first[it.record_id] = it.path
            files[where] = it.record_id
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


# ---------------------------------------------------------------- manifest and resume

def _params(cfg):
    p = asdict(cfg)
    p.pop("out_dir")
    p.pop("workers")
    p["band"] = list(cfg.band) if cfg.band else None
    p["filter"] = asdict(cfg.signal_path.filter_spec)
    p["filter"]["design"] = "Butterworth SOS, zero-phase (forward-backward), numba kernel"
    p["resampling"] = "scipy.signal.resample_poly (polyphase, Kaiser anti-aliasing)"
    p["length_rule"] = ("central window of `seconds`; shorter records zero-padded at the end, "
                        "valid length stored")
    database = databases.get(cfg.format)
    p["label_rule"] = database.label_rule(cfg)
    p["fold_rule"] = database.fold_rule
    return p


def _previous_shards(out):
    for name in (shards.PARTIAL_MANIFEST, shards.MANIFEST):
        path = out / name
        if path.exists():
            import json

            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            entries = data.get("shards", {})
            if isinstance(entries, list):
                entries = {e["index"]: e for e in entries if "index" in e}
            return {int(k): v for k, v in entries.items()}
    return {}


def _shard_intact(out, entry):
    if entry.get("file") is None:
        return entry.get("n_records", 0) == 0
    path = out / entry["file"]
    return path.exists() and shards.sha256_file(path) == entry["sha256"]


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
    written = [r for r in results if r["file"]]
    return {
        "schema_version": shards.SCHEMA_VERSION,
        "created_by": f"ecgshard {__version__}",
        "format": cfg.format,
        "source_dir": str(Path(cfg.source_dir).resolve()),
        "params": params,
        "fs": cfg.fs,
        "n_samples": cfg.n_samples,
        "leads": list(shards.LEADS),
        "ptbxl_rate": plan["rate"],
        "source_checksums": plan["checksums"],
        "classes": classes,
        "unknown_codes": plan["unknown_codes"],
        "rare_classes": plan.get("rare_classes", {}),
        "n_records": n_records,
        "n_skipped": len(skipped),
        "skip_counts": dict(Counter(s["reason"] for s in skipped)),
        "skipped": skipped,
        "kept_with_notes": [n for res in results for n in res.get("notes", [])],
        "measurements": _measurements_entry(results, _measured_from(cfg))
        if cfg.measure else None,
        "folds": {str(k): folds[k] for k in sorted(folds)},
        "sources": dict(sum((Counter(r["sources"]) for r in results), Counter())),
        "shards": [{k: r[k] for k in ("index", "file", "sha256", "n_records", "folds",
                                      "source_sha256", "task_fingerprint", "n_planned", "sources",
                                      "class_counts", "skipped", "notes", "not_measurable")}
                   for r in written],
        "fingerprint": shards.fingerprint([params, [r["sha256"] for r in written]]),
    }


def _measured_from(cfg):
    own = ("ecgshard.measure on the record as read (at its own rate, the central window), "
           "before the signal path; voltages in mV, except on a record flagged "
           "z_scored_source, which arrived z-scored per lead: its voltages are z-units")
    shipped = databases.get(cfg.format).shipped_measurements
    return f"{own}; the source's own measurements where it ships them: {shipped}" \
        if shipped else own


def _measurements_entry(results, source):
    """The manifest's account of the shards' measurements: version, names, units, from what
    signal, and per measurement how many records could not be measured, by reason."""
    counts = {}
    for res in results:
        for name, by in (res.get("not_measurable") or {}).items():
            counts.setdefault(name, Counter()).update(by)
    return {"version": measure.VERSION, "names": list(measure.NAMES), "units": measure.UNITS,
            "source": source, "not_measurable": {k: dict(v) for k, v in counts.items()}}


def summary_lines(manifest, every_class=False):
    """The manifest in a few lines: counts, skips, folds, sources and the classes (the 15
    most frequent, or ``every_class``)."""
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
    for c in sorted(present, key=lambda c: -c["count"])[:None if every_class else 15]:
        lines.append(f"    {c['code']:>14}  {c['count']:6d}  {c['name']}")
    if manifest.get("kept_with_notes"):
        lines.append(f"  kept with notes: {len(manifest['kept_with_notes'])} "
                     f"({dict(Counter(n['reason'] for n in manifest['kept_with_notes']))})")
    if manifest.get("unknown_codes"):
        lines.append(f"  codes not in the code table: {manifest['unknown_codes']}")
    return lines


def inspect(shard_dir, verify=False):
    """``ecgshard inspect``: the manifest summary with every class, and the measurements; with
    ``verify`` every shard's bytes are hashed against the manifest (a mismatch raises, naming
    the shard)."""
    manifest = shards.load_manifest(shard_dir)
    lines = summary_lines(manifest, every_class=True)
    if verify:
        for path, expected in shards.shard_entries(shard_dir, manifest).items():
            shards.verify_shard(path, expected.sha256, full=True)
            shards.open_shard(path, expected).close()
        lines.append(f"verified: all {len(manifest['shards'])} shards match their checksums")
    return lines + measurement_lines(shard_dir, manifest)


def measure_shards(shard_dir, workers=0):
    """``ecgshard measure``: add measurements to shards built without them (``--no-measure``,
    or an ecgshard before measurements), measured from the stored signal, whose rate, band and
    normalisation the manifest records as their source (z-scored shards carry no voltage).
    Each shard is rewritten atomically and the manifest follows; shards already measured at
    this version are left as they are."""
    out = Path(shard_dir)
    with shards.exclusive_lock(out, "measure"):
        manifest = shards.load_manifest(out)
        if shards.measured_now(manifest, measure.NAMES):
            log.info("%s: already measured (measurements version %d), left as it is", out,
                     measure.VERSION)
            return manifest
        path = SignalPath.of(manifest)
        entries = shards.shard_entries(out, manifest)
        workers = workers or os.cpu_count() or 1
        todo = [(str(out / e["file"]), entries[str(out / e["file"])]) for e in manifest["shards"]]
        from tqdm.auto import tqdm

        with _worker_pool(max(1, min(workers, len(todo))), measuring=True) as pool:
            done = dict(tqdm(pool.map(_measure_shard, todo), total=len(todo), unit="shard",
                             desc="measure", disable=None))
        for entry in manifest["shards"]:
            entry["sha256"], entry["not_measurable"] = done[str(out / entry["file"])]
        source = (f"the shard signal ({path.fs:g} Hz, band {path.band or 'off'}, "
                  f"{path.normalize}), by `ecgshard measure`")
        if path.normalize != "mv":
            source += "; z-scored per lead, so voltages are in z-units, not mV"
        manifest["measurements"] = _measurements_entry(manifest["shards"], source)
        manifest["fingerprint"] = shards.fingerprint([manifest["params"],
                                                      [e["sha256"] for e in manifest["shards"]]])
        shards.write_json(out / shards.MANIFEST, manifest)
        log.info("%s: %d records in %d shards measured (measurements version %d)", out,
                 manifest["n_records"], len(todo), measure.VERSION)
        return manifest


def _measure_shard(job):
    path, expected = job
    with shards.open_shard(path, expected) as f, shards.reading(path):
        arrays = {k: f[k][...] for k in shards.SHARD_DTYPES}
        arrays.update({k: shards.read_strings(f[k]) for k in shards.STRING_KEYS})
        attrs = {k: shards.attr_value(v) for k, v in f.attrs.items() if k != "schema_version"}
        compression = f[shards.SIGNAL].compression
    results = [measure.measure(sig[:, :n].astype(np.float64), expected.fs)
               for sig, n in zip(arrays[shards.SIGNAL], arrays[shards.LENGTH])]
    arrays[shards.MEASUREMENTS] = np.stack([values for values, _ in results])
    attrs.update(measurement_names=list(measure.NAMES), measurements_version=measure.VERSION)
    digest = shards.write_shard(path, arrays, attrs, compression=compression)
    return path, (digest, measure.count_reasons(reasons for _, reasons in results))


def measurement_lines(shard_dir, manifest):
    """``inspect``: each measurement's median and interquartile range over the records (a flag,
    ``measure.FLAGS``: how many records carry it), and how many could not be measured."""
    info = manifest.get("measurements")
    if not info:
        return ["  measurements: none (add them with `ecgshard measure`)"]
    columns = []
    for path, expected in shards.shard_entries(shard_dir, manifest).items():
        with shards.open_shard(path, expected) as f, shards.reading(path):
            columns.append(shards.read_measurements(f, info["names"], path))
    lines = [f"  measurements (version {info['version']}, from {info['source']}):"]
    for name in info["names"]:
        v = np.concatenate([c[name] for c in columns]) if columns else np.zeros(0)
        measured = v[np.isfinite(v)]
        missing = info["not_measurable"].get(name, {})
        why = f"; not measurable {sum(missing.values())} (" + ", ".join(
            f"{r} {n}" for r, n in sorted(missing.items(), key=lambda kv: -kv[1])) + ")" \
            if missing else ""
        if name in measure.FLAGS and len(measured):
            lines.append(f"    {name:>20}  {int(measured.sum())} of {len(measured)} records"
                         f"{why}")
        elif len(measured):
            q = np.percentile(measured, [25, 50, 75])
            lines.append(f"    {name:>20}  {q[1]:8.3g} ({q[0]:.3g} to {q[2]:.3g}) "
                         f"{info['units'][name]}{why}")
        else:
            lines.append(f"    {name:>20}  none measured{why}")
    return lines


def _natural(name):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else 0, name)
