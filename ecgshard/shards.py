"""The data contract between stages: every on-disk key, dtype and version lives here.

No other module spells an HDF5 key or a manifest field. ``docs/shards.md`` is the prose
version of this file; change both together and bump ``SCHEMA_VERSION`` on any change a
reader would notice.

Artifacts
---------
shard directory
    ``manifest.json`` + ``shard-NNNNN.h5``. Each shard holds N records:

    ==============  ===========  ==================  =========================================
    key             shape        dtype               meaning
    ==============  ===========  ==================  =========================================
    signal          (N, 12, T)   float16             filtered ECG, leads in ``LEADS`` order
    labels          (N, C)       uint8               multi-hot over the manifest vocabulary
    likelihood      (N, C)       uint8               PTB-XL statement likelihood (0-100);
                                                     100 where the source gives none
    mentioned       (N, C)       uint8               the record carries the statement at any
                                                     likelihood (a superset of ``labels``,
                                                     which keep only those at or above the
                                                     build's --min-likelihood): what
                                                     held-out exclusion reads
    record_id       (N,)         str (utf-8)         source record name, unique in the set
    patient_id      (N,)         str (utf-8)         patient (or record id where unknown)
    fold            (N,)         int8                1..10, patient-wise
    source          (N,)         str (utf-8)         source database of the record
    age             (N,)         float32             years, NaN when unknown
    sex             (N,)         int8                0 male, 1 female, -1 unknown
    length          (N,)         int32               valid samples before padding (<= T)
    ==============  ===========  ==================  =========================================

    ``signal`` is chunked ``(CHUNK_RECORDS, 12, T)`` so a reader takes whole record blocks.

    Optional, written by ``build`` (default) or ``ecgshard measure``:

    ==============  ===========  ==================  =========================================
    measurements    (N, K)       float32             ``ecgshard.measure.NAMES`` (attribute
                                                     ``names``; ``version``), in their units,
                                                     NaN where not measurable; the manifest's
                                                     ``measurements`` says from what signal
                                                     and counts each NaN's reason
    ==============  ===========  ==================  =========================================
text matrix (HDF5)
    ``emb`` (C, D) float32 L2-normalised rows, ``codes`` and ``texts`` (C,) str, and attributes
    naming the model, revision, pooling, templates and an input fingerprint.
run record (``RUN_DIR/run.json``, ``RunInfo``)
    what a trained run is for every later stage: classes, holdout, folds, the shards and text
    matrix it was trained on (fingerprints, signal path) and its record counts.
checkpoint (torch ``.pt``)
    a dict with ``schema_version``, the encoder config (``models.EncoderConfig``) and the
    ``ZeroShotModel`` state (encoder, logit scale and bias, learned class vectors if any),
    optimiser and schedule, class codes, the training classes' text rows, text-matrix hash, and
    ``validation``: that checkpoint's embeddings and labels of the validation records (what
    ``zeroshot`` chooses thresholds on, without reading the training shards again).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import SchemaError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
TEXT_SCHEMA_VERSION = 1
CHECKPOINT_SCHEMA_VERSION = 3
RUN_SCHEMA_VERSION = 2          # 2: several shard sets (lists); 1 is read as one set

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
CHUNK_RECORDS = 64

SIGNAL = "signal"
LABELS = "labels"
LIKELIHOOD = "likelihood"
MENTIONED = "mentioned"
RECORD_ID = "record_id"
PATIENT_ID = "patient_id"
FOLD = "fold"
SOURCE = "source"
AGE = "age"
SEX = "sex"
LENGTH = "length"

SHARD_DTYPES = {
    SIGNAL: np.float16,
    LABELS: np.uint8,
    LIKELIHOOD: np.uint8,
    MENTIONED: np.uint8,
    FOLD: np.int8,
    AGE: np.float32,
    SEX: np.int8,
    LENGTH: np.int32,
}
STRING_KEYS = (RECORD_ID, PATIENT_ID, SOURCE)
MEASUREMENTS = "measurements"           # optional; see the table above
SHARD_KEYS = tuple(SHARD_DTYPES) + STRING_KEYS

MANIFEST = "manifest.json"
PARTIAL_MANIFEST = "manifest.partial.json"
REQUIRED_MANIFEST_FIELDS = ("schema_version", "format", "params", "classes", "shards", "skipped",
                            "n_records", "fs", "n_samples", "leads")


def check_version(found, expected, what, path, fix):
    """The one schema check of every artifact: a version other than this ecgshard's is refused
    with the way out."""
    if found != expected:
        raise SchemaError(f"{path}: {what} schema version {found}, this ecgshard reads "
                          f"{expected}; {fix}")


def shard_name(index):
    return f"shard-{index:05d}.h5"


SHARD_GLOB = "shard-*.h5"               # every shard_name()


# ---------------------------------------------------------------- atomic files and hashes

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds.

    A crash leaves at most a ``.tmp-*`` file, never a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        _raise_if_disk_full(exc, path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _raise_if_disk_full(exc, path):
    # Libraries word a full disk their own way (torch: "[enforce fail at
    # inline_container.cc...]", PIL, HDF5), so the free space itself is asked too.
    import shutil

    try:
        nearly_full = shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        nearly_full = False
    if getattr(exc, "errno", None) == errno.ENOSPC or nearly_full or any(
            mark in str(exc) for mark in ("No space left", "file write failed")):
        raise SchemaError(f"no space left on the device holding {path.parent} while writing "
                          f"{path.name}; nothing kept was corrupted (files are written "
                          f"aside and renamed when complete). Free space and rerun: the "
                          f"stage resumes") from None


def check_replaceable(path, marker):
    """``path`` (a Path) if it is new, empty or holds ``marker``; else a clear error."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and \
            not (path / marker).exists():
        raise SchemaError(f"{path} holds files but no {marker}: not a directory this stage "
                          f"writes, and it would be replaced as a whole; give an empty or a "
                          f"new directory")
    return path


@contextlib.contextmanager
def atomic_dir(path, marker):
    """Yield a temporary sibling directory; when the block succeeds it replaces ``path`` as a
    whole, so a set of files (a report and its plots) is never mixed with an older set nor
    left half-written. ``path`` is replaced only if it is empty or holds ``marker`` (a file
    every such set has): another directory's files are never deleted."""
    import shutil

    path = check_replaceable(path, marker)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    old = path.with_name(f".old-{os.getpid()}-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            yield tmp
        except (OSError, RuntimeError) as exc:
            _raise_if_disk_full(exc, path)
            raise
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_json(path, fix):
    """A JSON object from ``path``; a damaged or hand-broken file is an error naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(obj, dict):
        raise SchemaError(f"{path} holds a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def sha256_file(path, block=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(obj):
    """A stable sha256 of a JSON-able object (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------- shards

def write_shard(path, arrays, attrs, compression=None):
    """Write one shard atomically and return its sha256.

    Parameters
    ----------
    arrays : dict
        Every key of ``SHARD_KEYS``; numeric arrays are cast to ``SHARD_DTYPES``.
    attrs : dict
        Scalar or JSON-able attributes stored on the file (``fs``, ``codes``...).
    """
    import h5py

    missing = [k for k in SHARD_KEYS if k not in arrays]
    if missing:
        raise SchemaError(f"shard is missing {missing}")
    n = len(arrays[RECORD_ID])
    with atomic_path(path) as tmp:
        # libver v110: metadata checksummed; fletcher32: every chunk's data checksummed, so
        # a changed byte fails the read that meets it, whatever the file's mtime says.
        with h5py.File(tmp, "w", libver=("v110", "latest")) as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
            for key, dtype in SHARD_DTYPES.items():
                data = np.asarray(arrays[key], dtype=dtype)
                if len(data) != n:
                    raise SchemaError(f"{key} has {len(data)} rows, expected {n}")
                # the signal in CHUNK_RECORDS-record chunks, the rest as HDF5 chooses; an
                # empty dataset cannot be chunked, so it carries no checksum
                chunks = (min(CHUNK_RECORDS, n),) + data.shape[1:] if key == SIGNAL else True
                f.create_dataset(key, data=data, chunks=chunks if n else None, fletcher32=n > 0,
                                 compression=compression if key == SIGNAL else None)
            if MEASUREMENTS in arrays:
                data = np.asarray(arrays[MEASUREMENTS], dtype=np.float32)
                if data.shape[0] != n or data.shape[1:] != (len(attrs["measurement_names"]),):
                    raise SchemaError(f"{MEASUREMENTS} has shape {data.shape}, expected ({n}, "
                                      f"{len(attrs['measurement_names'])})")
                f.create_dataset(MEASUREMENTS, data=data, chunks=True if n else None,
                                 fletcher32=n > 0)
            for key in STRING_KEYS:
                # fixed-length UTF-8: variable-length strings take no filter, so no checksum
                encoded = [str(s).encode() for s in arrays[key]]
                width = max(map(len, encoded), default=1) or 1
                f.create_dataset(key, data=np.asarray(encoded, dtype=f"S{width}"),
                                 chunks=True if n else None, fletcher32=n > 0)
        digest = sha256_file(tmp)
    return digest


def open_shard(path, expected=None):
    """Open a shard read-only after checking its schema version and shapes and, given its
    ``Expected`` from the manifest (``shard_entries``), its bytes (``verify_shard``) and that
    it holds what the manifest says: an edited manifest would mislabel or drop records."""
    import h5py

    if expected is not None:
        verify_shard(path, expected.sha256)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SchemaError(f"{path}: not a readable HDF5 shard ({exc}); `ecgshard build` with "
                          f"the same options rebuilds damaged shards") from None
    try:
        with reading(path):
            check_shard(f, path)
            if expected is not None:
                _check_against_manifest(f, path, expected)
    except Exception:
        f.close()
        raise
    return f


@contextlib.contextmanager
def reading(path, fix="Rebuild it (`ecgshard build` with the same options rebuilds only "
                       "damaged shards)"):
    """Data read from an HDF5 file inside the block is checked by HDF5's per-chunk checksums
    (fletcher32, see ``write_shard``); a failed read becomes an error naming the file."""
    try:
        yield
    except OSError as exc:
        raise SchemaError(f"{path}: damaged data ({exc}); the bytes changed after it was "
                          f"written. {fix}") from None


@dataclass(frozen=True)
class Expected:
    """What the manifest says one shard holds."""
    sha256: str
    n_records: int
    folds: tuple
    codes: tuple
    fs: float
    n_samples: int


def shard_entries(shard_dir, manifest):
    """Shard path (str) -> its ``Expected`` by the manifest."""
    codes = tuple(class_codes(manifest))
    return {str(Path(shard_dir) / s["file"]): Expected(
        s["sha256"], s["n_records"], tuple(sorted(int(k) for k in s["folds"])), codes,
        manifest["fs"], manifest["n_samples"]) for s in manifest["shards"]}


def _check_against_manifest(f, path, expected):
    found = Expected(expected.sha256, f[SIGNAL].shape[0],
                     tuple(sorted({int(x) for x in f[FOLD][...]})),
                     tuple(attr_value(f.attrs.get("codes", "[]"))),
                     float(f.attrs.get("fs", "nan")), f[SIGNAL].shape[2])
    differs = [f"{k}: {getattr(found, k)!r} in the shard, {getattr(expected, k)!r} in the "
               f"manifest" for k in ("n_records", "folds", "codes", "fs", "n_samples")
               if getattr(found, k) != getattr(expected, k)]
    if differs:
        raise SchemaError(f"{path} does not hold what {MANIFEST} says ({'; '.join(differs)}): "
                          f"the manifest was edited or belongs to other shards. Rebuild with "
                          f"`ecgshard build`")


VERIFIED_STAMPS = ".verified.json"
_verified = {}      # (path, size, mtime_ns) -> sha256 hashed in this process


def verify_shard(path, sha256, full=False):
    """Refuse a shard whose bytes are not the ones its manifest names.

    Hashing every shard on every open would cost a full read, so a shard is hashed once per
    process, and a stamp ``(size, mtime_ns, sha256)`` is kept beside the shards (where the
    directory is writable) so that later processes hash only files that changed since. Any
    write to a shard changes its mtime; ``full`` (``inspect --verify``) hashes regardless.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise SchemaError(f"{path}: the manifest lists this shard but it cannot be read "
                          f"({exc.strerror}); rebuild with `ecgshard build`") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    stamp_file = path.parent / VERIFIED_STAMPS
    stamps = _read_stamps(stamp_file)
    if not full and (_verified.get(key) == sha256
                     or stamps.get(path.name) == [st.st_size, st.st_mtime_ns, sha256]):
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise SchemaError(f"{path}: checksum {actual[:12]}... does not match the manifest's "
                          f"{sha256[:12]}...: the shard changed after it was written. Rebuild "
                          f"it (`ecgshard build` with the same options rebuilds only damaged "
                          f"shards)")
    _verified[key] = sha256
    stamps[path.name] = [st.st_size, st.st_mtime_ns, sha256]
    try:
        write_json(stamp_file, stamps)
    except OSError:                            # a read-only dataset: hash again next time
        pass


def _read_stamps(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive_lock(directory, what, beside=False):
    """Hold an exclusive lock on ``directory`` (its ``.lock`` file; with ``beside``, a
    ``.NAME.lock`` next to it, for a directory replaced as a whole) for the block; a second
    process asking for it is refused at once with a message naming the holder."""
    import fcntl

    directory = Path(directory)
    home = directory.parent if beside else directory
    home.mkdir(parents=True, exist_ok=True)
    lock = open(home / (f".{directory.name}.lock" if beside else ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise SchemaError(f"{directory} is in use by {holder}; two {what}s into one directory "
                          f"would mix their files. Wait for it, or use another directory")
    lock.seek(0)
    left = lock.read().strip()
    if left:
        # a finished holder empties the file: what is left names one that was killed
        log.warning("%s: taking over the lock left by %s, which ended without releasing it "
                    "(killed?)", directory, left)
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} ({what})")
        lock.flush()
        yield
    finally:
        lock.seek(0)
        lock.truncate()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def check_shard(f, path=""):
    check_version(f.attrs.get("schema_version"), SCHEMA_VERSION, "shard", path,
                  "rebuild the shards")
    missing = [k for k in SHARD_KEYS if k not in f]
    if missing:
        raise SchemaError(f"{path}: shard lacks datasets {missing}")
    n = f[SIGNAL].shape[0]
    if f[SIGNAL].ndim != 3 or f[SIGNAL].shape[1] != len(LEADS):
        raise SchemaError(f"{path}: signal shape {f[SIGNAL].shape}, expected (N, 12, T)")
    for key in SHARD_KEYS:
        if f[key].shape[0] != n:
            raise SchemaError(f"{path}: {key} has {f[key].shape[0]} rows, signal has {n}")


def measured_now(manifest, names):
    """Whether a shard set's manifest says its shards carry ``names`` measured at this
    measurement version (``ecgshard measure`` measures the others again): the rule of
    ``check_measurements``, asked rather than enforced."""
    measured = manifest.get("measurements") or {}
    try:
        check_measurements(measured.get("version"), measured.get("names") or (), names,
                           MANIFEST, "")
    except SchemaError:
        return False
    return True


def check_measurements(version, stored, names, path, shard_dir):
    """Measurements of this ecgshard's version that hold ``names``, else the way to add them:
    a shard's (attributes) or a whole shard set's (its manifest's entry)."""
    from . import measure

    fix = f"add them with `ecgshard measure {shard_dir}`"
    check_version(version, measure.VERSION, "measurements", path, fix)
    missing = [n for n in names if n not in stored]
    if missing:
        raise SchemaError(f"{path}: measurements lack {missing}; {fix}")


def read_measurements(f, names, path="", sel=slice(None)):
    """The shard's measurements as ``{name: (N,) float32}`` for ``names``; a shard without
    them, or of another measurement version, is refused with the way to add them."""
    if MEASUREMENTS not in f:
        raise SchemaError(f"{path}: no measurements in this shard; add them with "
                          f"`ecgshard measure {Path(path).parent}`")
    stored = json.loads(f.attrs["measurement_names"])
    check_measurements(f.attrs.get("measurements_version"), stored, names, path,
                       Path(path).parent)
    data = f[MEASUREMENTS][sel]
    return {n: data[:, stored.index(n)] for n in names}


def read_mentioned(f, sel=slice(None)):
    """The statements records carry at any likelihood (see ``MENTIONED``)."""
    return f[MENTIONED][sel]


def read_strings(dataset, sel=slice(None)):
    return np.asarray([s.decode() if isinstance(s, bytes) else s for s in dataset[sel]],
                      dtype=object)


# ---------------------------------------------------------------- manifest

def load_manifest(shard_dir):
    """Read and check ``manifest.json`` of a shard directory."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        hint = " (an interrupted build: run `ecgshard build` again to resume)" \
            if (Path(shard_dir) / PARTIAL_MANIFEST).exists() else ""
        raise SchemaError(f"{shard_dir} has no {MANIFEST}; not a finished shard directory{hint}")
    manifest = read_json(path, "rebuild the shards with `ecgshard build` (it resumes)")
    check_version(manifest.get("schema_version"), SCHEMA_VERSION, "manifest", path,
                  "rebuild the shards")
    missing = [k for k in REQUIRED_MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise SchemaError(f"{path}: manifest lacks {missing}")
    in_shards = sum(s["n_records"] for s in manifest["shards"])
    if manifest["n_records"] != in_shards:
        raise SchemaError(f"{path}: n_records {manifest['n_records']} but its shards list "
                          f"{in_shards}: the manifest was edited. Rebuild with `ecgshard build`")
    return manifest


def lead_names(leads):
    """``leads`` as names of ``LEADS`` (any case: ``avr`` is aVR); anything else is refused,
    since an unknown name would silently zero every lead."""
    if isinstance(leads, str):
        raise SchemaError(f"leads must be a list of names, got the string {leads!r} (write "
                          f"[{leads!r}])")
    known = {lead.upper(): lead for lead in LEADS}
    unknown = [x for x in leads if str(x).upper() not in known]
    if unknown or not leads:
        raise SchemaError(f"unknown lead names {unknown or '(none given)'}; leads are "
                          f"{list(LEADS)}")
    return [known[str(x).upper()] for x in leads]


def keep_leads(signal, leads):
    """Zero every lead of a ``(N, 12, T)`` array but ``leads`` (names), in place, as a
    reduced-lead recording presents them to a model that met missing leads in training
    (lead-dropout augmentation). Returns the array."""
    keep = set(lead_names(leads))
    absent = [i for i, lead in enumerate(LEADS) if lead not in keep]
    signal[:, absent] = 0
    return signal


def patient_keys(sources, patient_ids):
    """One key per record naming its patient across sources (ids repeat between databases):
    what bootstraps resample and probes draw by."""
    return np.asarray([f"{s}/{p}" for s, p in zip(sources, patient_ids)])


def class_codes(manifest):
    return [c["code"] for c in manifest["classes"]]


def shard_paths(shard_dir, manifest):
    return [Path(shard_dir) / s["file"] for s in manifest["shards"]]


# ---------------------------------------------------------------- text matrix

@dataclass(frozen=True)
class TextMatrix:
    emb: np.ndarray          # (C, D) float32, rows L2-normalised
    codes: list
    texts: list
    names: list
    attrs: dict
    # the measured-finding statements (ecgshard.findings), embedded alike; none in a matrix
    # from before them
    finding_codes: list = ()
    finding_texts: list = ()
    finding_emb: np.ndarray | None = None
    # each class's reading sentences (its finding sentences, embedded one by one) as rows of
    # ``sentence_emb`` owned by ``sentence_rows`` (indices into ``codes``); none in a matrix
    # from before them
    sentence_emb: np.ndarray | None = None
    sentence_rows: np.ndarray | None = None

    @property
    def sha256(self):
        return self.attrs["content_sha256"]

    def rows(self, codes):
        """Row indices of ``codes``; a clear error names the codes the matrix lacks."""
        index = {c: i for i, c in enumerate(self.codes)}
        missing = [c for c in codes if c not in index]
        if missing:
            raise SchemaError(f"text matrix ({self.attrs.get('model_id')}) has no embedding for "
                              f"{len(missing)} classes: {missing[:10]}; rerun "
                              f"`ecgshard embed-text` "
                              f"with a vocabulary that covers them")
        return np.asarray([index[c] for c in codes], dtype=np.int64)

    def finding_rows(self, codes):
        """(len(codes), D) rows of measured-finding statements; a matrix without them (or
        without one of ``codes``) is refused with the way to make them."""
        index = {c: i for i, c in enumerate(self.finding_codes)}
        missing = [c for c in codes if c not in index]
        if missing:
            raise SchemaError(f"the text matrix ({self.attrs.get('model_id')}) has no "
                              f"measured-finding statements {missing[:5]}; rerun `ecgshard "
                              f"embed-text` (this ecgshard embeds them beside the classes)")
        return self.finding_emb[[index[c] for c in codes]]

    def sentences(self, codes):
        """Each class's reading sentences, a list of (k, D) unit rows: what ``--scoring
        findings`` reads in the trained statements sentence by sentence. A class the matrix
        holds none for (a matrix from before them) reads as its row alone."""
        rows = self.rows(codes)
        if self.sentence_emb is None:
            return [self.emb[[r]] for r in rows]
        owned = [self.sentence_emb[self.sentence_rows == r] for r in rows]
        return [s if len(s) else self.emb[[r]] for s, r in zip(owned, rows)]


def text_content_sha256(emb, codes, texts, findings=None, sentences=None):
    h = hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes())
    h.update(json.dumps([list(codes), list(texts)]).encode())
    if findings is not None:
        f_codes, f_texts, f_emb = findings
        h.update(np.ascontiguousarray(f_emb, dtype=np.float32).tobytes())
        h.update(json.dumps([list(f_codes), list(f_texts)]).encode())
    if sentences is not None:
        owners, s_emb = sentences
        h.update(np.ascontiguousarray(owners, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(s_emb, dtype=np.float32).tobytes())
    return h.hexdigest()


def write_text_matrix(path, emb, codes, texts, names, attrs, findings=None, sentences=None):
    """``findings``: (codes, statements, (F, D) rows) of the measured-finding vocabulary;
    ``sentences``: ((S,) owning row index, (S, D) rows) of the classes' reading sentences."""
    import h5py

    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(codes) or len(codes) != len(texts):
        raise SchemaError(f"text matrix shape {emb.shape} does not fit {len(codes)} codes")
    if sentences is not None:
        sentences = (np.asarray(sentences[0], np.int64), np.asarray(sentences[1], np.float32))
        if len(sentences[0]) != len(sentences[1]) or \
                not np.all((sentences[0] >= 0) & (sentences[0] < len(codes))):
            raise SchemaError(f"{len(sentences[1])} reading sentences owned by rows outside "
                              f"the {len(codes)} classes")
    attrs = dict(attrs, schema_version=TEXT_SCHEMA_VERSION,
                 content_sha256=text_content_sha256(emb, codes, texts, findings, sentences))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("emb", data=emb)
            strings = [("codes", codes), ("texts", texts), ("names", names)]
            if findings is not None:
                f.create_dataset("finding_emb", data=np.asarray(findings[2], np.float32))
                strings += [("finding_codes", findings[0]), ("finding_texts", findings[1])]
            if sentences is not None:
                f.create_dataset("sentence_rows", data=sentences[0])
                f.create_dataset("sentence_emb", data=sentences[1])
            for key, values in strings:
                f.create_dataset(key, data=np.asarray(list(values), dtype=object),
                                 dtype=h5py.string_dtype())
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value


def read_text_matrix(path):
    import h5py

    if not Path(path).exists():
        raise SchemaError(f"no text matrix at {path}; create it with `ecgshard embed-text`")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SchemaError(f"{path} is not a readable HDF5 text matrix ({exc}); create it with "
                          f"`ecgshard embed-text`") from None
    with f, reading(path, "Rerun `ecgshard embed-text --force`"):
        if "emb" not in f:
            raise SchemaError(f"{path} is an HDF5 file but no text matrix (no 'emb'); create "
                              f"it with `ecgshard embed-text`")
        attrs = {k: attr_value(v) for k, v in f.attrs.items()}
        check_version(attrs.get("schema_version"), TEXT_SCHEMA_VERSION, "text matrix", path,
                      "rerun `ecgshard embed-text --force`")
        emb = f["emb"][...]
        codes, texts, names = (list(read_strings(f[k])) for k in ("codes", "texts", "names"))
        findings = (list(read_strings(f["finding_codes"])),
                    list(read_strings(f["finding_texts"])), f["finding_emb"][...]) \
            if "finding_emb" in f else None
        sentences = (f["sentence_rows"][...], f["sentence_emb"][...]) \
            if "sentence_emb" in f else None
    if text_content_sha256(emb, codes, texts, findings, sentences) != attrs["content_sha256"]:
        raise SchemaError(f"{path}: content hash does not match; the file is damaged")
    return TextMatrix(emb=emb, codes=codes, texts=texts, names=names, attrs=attrs,
                      **({} if findings is None else dict(
                          finding_codes=findings[0], finding_texts=findings[1],
                          finding_emb=findings[2])),
                      **({} if sentences is None else dict(
                          sentence_rows=sentences[0], sentence_emb=sentences[1])))


def attr_value(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- embeddings (embed)

def write_embeddings(path, emb, data, codes, provenance):
    """One HDF5 file: ``emb`` (N, D) float32 and, per record, its id, patient, source, fold and
    labels (N, C) over ``codes``; the provenance as a JSON attribute."""
    import h5py

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("emb", data=np.asarray(emb, dtype=np.float32))
            for key in (RECORD_ID, PATIENT_ID, SOURCE):
                f.create_dataset(key, data=np.asarray(data[key]).astype(object),
                                 dtype=h5py.string_dtype())
            f.create_dataset(FOLD, data=np.asarray(data["fold"], dtype=np.int16))
            f.create_dataset(LABELS, data=np.asarray(data["labels"], dtype=np.uint8))
            f.create_dataset("codes", data=np.asarray(list(codes), dtype=object),
                             dtype=h5py.string_dtype())
            f.attrs["provenance"] = json.dumps(provenance)


# ---------------------------------------------------------------- run record

RUN_INFO = "run.json"
# A run carries its own copy of what scoring new texts needs, checked by hash on every load,
# so nothing rewritten at the paths it was trained from can change its scores.
RUN_TEXT = "text.h5"
RUN_CLASS_TEXTS = "class_texts.json"


@dataclass(frozen=True)
class RunInfo:
    """What a trained run is, for every stage after ``fit``; written once by ``fit``."""
    train_codes: list
    holdout: list                       # the closed holdout the run used
    holdout_requested: list             # as asked, before closure
    dropped_rare_classes: list          # below --min-positives in the training folds
    records: dict                       # {"train": n, "val": n}, over every shard set
    records_excluded_for_heldout_labels: dict
    strict_zero_shot: bool
    folds: dict                         # {"train": [...], "val": [...], "test": [...]}
    shards: list                        # the trained shard sets, then per set:
    shards_fingerprint: list
    dataset_fingerprint: list           # (None for a set built before it was recorded)
    shard_sets: list                    # records, exclusions and sources of each set
    shard_weights: list                 # each set's share of an epoch; [] = by size
    shard_sources: list
    signal_path: dict                   # signal.SignalPath.to_dict(): what scored shards match
    text: str                           # the matrix as given to fit; RUN_TEXT is its copy
    text_sha256: str
    text_model: str | None
    class_texts_sha256: str | None = None   # RUN_CLASS_TEXTS (runs before it: None)
    finding_codes: list = ()            # measured-finding statements trained as targets
    input_lead_sd: float | None = None  # signal.amplitude_scale of its validation input
    finding_positives: dict | None = None   # their training positives
    findings_withheld: dict | None = None   # statement -> why (fit.findings_withheld)


def write_run_info(run_dir, info):
    write_json(Path(run_dir) / RUN_INFO, dict(asdict(info), schema_version=RUN_SCHEMA_VERSION))


def read_run_info(run_dir):
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        raise SchemaError(f"{run_dir} has no {RUN_INFO}: not a run directory (`ecgshard fit` "
                          f"writes one)")
    data = read_json(path, "train the run again")
    version = data.pop("schema_version", None)
    if version == 1:                    # one shard set, before fits over several
        for key in ("shards", "shards_fingerprint", "dataset_fingerprint"):
            data[key] = [data[key]]
        data.update(shard_sets=[], shard_weights=[])
    else:
        check_version(version, RUN_SCHEMA_VERSION, "run record", path,
                      "train the run again with this ecgshard")
    return RunInfo(**data)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path, state):
    """Atomically save a self-describing checkpoint dict (see module docstring)."""
    import torch

    state = dict(state, schema_version=CHECKPOINT_SCHEMA_VERSION)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, map_location="cpu"):
    import torch

    if not Path(path).exists():
        raise SchemaError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise SchemaError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
                          f"{str(exc)[:200]}): truncated or damaged. checkpoint-last.pt and "
                          f"checkpoint-best.pt are written aside and renamed, so the other "
                          f"one may be whole") from None
    if not isinstance(state, dict):
        raise SchemaError(f"{path} is not an ecgshard checkpoint")
    check_version(state.get("schema_version"), CHECKPOINT_SCHEMA_VERSION, "checkpoint", path,
                  "train the run again with this ecgshard")
    return state
