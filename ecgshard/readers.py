"""Readers of raw WFDB records (headers, format-16 and MAT v4 signals, leads by name) and the
id-hashed fold rule; what is particular to one database lives in ``ecgshard.databases``.

A reader returns ``(sig, fs, lead_names)`` with ``sig`` float32 ``(n_leads, T)`` in millivolts.
Format-16 signals (every PTB-XL record, and every Challenge ``.mat``, whose header says
``16+24``: int16 samples interleaved after a 24-byte MAT v4 header) are read directly with
numpy; any other WFDB format goes through ``wfdb.rdrecord``. The fast path is what makes a build
fast (see docs/performance.md); ``tests/test_readers.py`` checks it against wfdb.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadRecordError
from .shards import LEADS

log = logging.getLogger(__name__)

_LEAD_ALIASES = {name.upper(): name for name in LEADS}
_INVALID = {16: -32768, 61: -32768, 80: -128, 212: -2048, 310: -512, 311: -512, 24: -8388608,
            32: -2147483648}
_UNIT_SCALE = {"MV": 1.0, "UV": 1e-3, "µV".upper(): 1e-3, "V": 1e3, "NV": 1e-6}


@dataclass
class Header:
    record: str
    n_sig: int
    fs: float
    n_samples: int
    files: list = field(default_factory=list)
    fmts: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    gains: list = field(default_factory=list)
    baselines: list = field(default_factory=list)
    units: list = field(default_factory=list)
    leads: list = field(default_factory=list)
    checksums: list = field(default_factory=list)   # 16-bit sums of the samples; None: not given
    comments: dict = field(default_factory=dict)


def parse_header(text, path=""):
    """Parse a WFDB ``.hea`` text (single-segment records) into a ``Header``."""
    lines = [ln.strip() for ln in text.splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise BadRecordError("unreadable_header", f"{path}: empty header")
    head = body[0].split()
    try:
        record, n_sig = head[0], int(head[1])
        fs = float(re.match(r"[0-9.eE+-]+", head[2]).group()) if len(head) > 2 else 250.0
        n_samples = int(head[3]) if len(head) > 3 else 0
        if "/" in record:
            raise BadRecordError("multi_segment", f"{path}: multi-segment records are not read")
        hdr = Header(record=record, n_sig=n_sig, fs=fs, n_samples=n_samples)
        for line in body[1:1 + n_sig]:
            parts = line.split()
            fmt_field = parts[1]
            m = re.match(r"(\d+)(?:x\d+)?(?::\d+)?(?:\+(\d+))?", fmt_field)
            gain_field = parts[2] if len(parts) > 2 else "200"
            g = re.match(r"([0-9.eE+-]+)(?:\(([-0-9]+)\))?(?:/(\S+))?", gain_field)
            gain = float(g.group(1)) or 200.0
            adc_zero = int(parts[4]) if len(parts) > 4 else 0
            baseline = int(g.group(2)) if g.group(2) is not None else adc_zero
            hdr.files.append(parts[0])
            hdr.fmts.append(int(m.group(1)))
            hdr.offsets.append(int(m.group(2) or 0))
            hdr.gains.append(gain)
            hdr.baselines.append(baseline)
            hdr.units.append(g.group(3) or "mV")
            hdr.leads.append(parts[8] if len(parts) > 8 else "")
            hdr.checksums.append(int(parts[6]) if len(parts) > 6 else None)
    except BadRecordError:
        raise
    except (IndexError, ValueError, AttributeError) as exc:
        raise BadRecordError("unreadable_header", f"{path}: {exc}") from None
    if len(hdr.files) != n_sig:
        raise BadRecordError("unreadable_header", f"{path}: {n_sig} signals announced, "
                             f"{len(hdr.files)} described")
    for line in lines:
        # Challenge headers write both "#Dx: ..." and "# Dx: ...".
        m = re.match(r"#\s*([A-Za-z]+)\s*:\s*(.*)", line)
        if m:
            hdr.comments[m.group(1)] = m.group(2).strip()
    return hdr


def canonical_lead(name):
    """Map a lead label to its canonical spelling (``AVR``, ``avr`` -> ``aVR``), or None."""
    return _LEAD_ALIASES.get(name.strip().upper())


def read_wfdb(hea_path):
    """Read one WFDB record.

    Returns
    -------
    sig : (n_leads, T) float32, millivolts
    fs : float, Hz
    leads : list of str, canonical names where known
    header : Header
    digest : str, sha256 of header and signal bytes (source checksum)
    """
    hea_path = Path(hea_path)
    try:
        text = hea_path.read_text(errors="replace")
    except OSError as exc:
        raise BadRecordError("unreadable_header", f"{hea_path}: {exc}") from None
    hdr = parse_header(text, hea_path)
    digest = hashlib.sha256(text.encode())
    if hdr.n_samples < 0:
        raise BadRecordError("unreadable_header", f"{hea_path}: {hdr.n_samples} samples")
    if len(set(hdr.files)) == 1 and set(hdr.fmts) == {16} and len(set(hdr.offsets)) == 1:
        raw = _read_fmt16(hea_path.parent / hdr.files[0], hdr, digest)
    else:
        raw = _read_with_wfdb(hea_path, hdr)
    if raw.shape[1] == 0:
        raise BadRecordError("empty_record", f"{hea_path}: no samples")
    _check_checksums(raw, hdr, hea_path)
    gains = np.asarray(hdr.gains, dtype=np.float32)[:, None]
    baselines = np.asarray(hdr.baselines, dtype=np.float32)[:, None]
    scale = np.asarray([_unit_scale(u, hea_path) for u in hdr.units], dtype=np.float32)[:, None]
    sig = (raw.astype(np.float32) - baselines) / gains * scale
    # WFDB marks an invalid sample with the format's lowest value (-32768 in format 16).
    sig[raw == _INVALID.get(hdr.fmts[0], np.iinfo(np.int64).min)] = np.nan
    leads = [canonical_lead(n) or n for n in hdr.leads]
    return sig, hdr.fs, leads, hdr, digest.hexdigest()


def _check_checksums(raw, hdr, path):
    """WFDB headers carry each signal's 16-bit sum of samples: a mismatch means damaged or
    misread samples (a flipped byte, a wrong format or offset), which no range check sees."""
    sums = raw.astype(np.int64).sum(axis=1) & 0xFFFF
    bad = [f"{hdr.leads[i] or i}: header {c}, samples {int(s) - (s >= 0x8000) * 0x10000}"
           for i, (c, s) in enumerate(zip(hdr.checksums, sums))
           if c is not None and (c & 0xFFFF) != s]
    if bad:
        raise BadRecordError("checksum_mismatch", f"{path}: the samples do not sum to the "
                             f"header's checksums ({'; '.join(bad[:3])}"
                             f"{f'; {len(bad) - 3} more' if len(bad) > 3 else ''})")


def _unit_scale(unit, path):
    scale = _UNIT_SCALE.get(unit.upper())
    if scale is None:
        raise BadRecordError("unknown_units", f"{path}: signal units {unit!r}")
    return scale


def _read_fmt16(dat_path, hdr, digest):
    blob = _read_signal_file(dat_path)
    digest.update(blob)
    offset = hdr.offsets[0]
    if dat_path.suffix == ".mat":
        _check_mat4(blob, hdr, dat_path)
    # WFDB reads a header without a sample count to the end of the signal file.
    n_samples = hdr.n_samples or (len(blob) - offset) // (2 * hdr.n_sig)
    need = offset + 2 * n_samples * hdr.n_sig
    if len(blob) < need:
        raise BadRecordError("truncated_signal", f"{dat_path}: {len(blob)} bytes, header needs "
                             f"{need}")
    data = np.frombuffer(blob, dtype="<i2", count=n_samples * hdr.n_sig, offset=offset)
    # WFDB stores samples interleaved by signal: (T, n_sig) in file order.
    return data.reshape(n_samples, hdr.n_sig).T


def _read_signal_file(path):
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadRecordError("missing_signal_file", f"{path} does not exist") from None
    except OSError as exc:
        raise BadRecordError("unreadable_signal", f"{path}: {exc.strerror or exc}") from None


# MAT v4: five little-endian int32 (type MOPT, rows, columns, imaginary flag, name length),
# the name, then the data column by column. The Challenge's "16+24" means type 30 (int16, full
# matrix), one row per signal, one column per sample and the 4-byte name "val".
_MAT4_INT16 = 30


def _check_mat4(blob, hdr, path):
    """The 24-byte MAT v4 header must describe what the WFDB header says; anything else (a
    MAT v5 file, doubles, another shape) would be read as garbage samples."""
    if blob[:6] == b"MATLAB" or len(blob) < 20:
        raise BadRecordError("unreadable_signal", f"{path}: not a MAT v4 file (MAT v5 or "
                             f"truncated); the Challenge's .mat files are MAT v4 int16")
    mopt, rows, cols, imag, namlen = np.frombuffer(blob, "<i4", count=5)
    problems = []
    if mopt != _MAT4_INT16:
        problems.append(f"type {mopt} (int16 is {_MAT4_INT16})")
    if rows != hdr.n_sig:
        problems.append(f"{rows} rows for {hdr.n_sig} signals")
    if hdr.n_samples and cols != hdr.n_samples:
        problems.append(f"{cols} columns for {hdr.n_samples} samples")
    if imag:
        problems.append("complex values")
    if 20 + namlen != hdr.offsets[0]:
        problems.append(f"data at byte {20 + namlen}, header says {hdr.offsets[0]}")
    if problems:
        raise BadRecordError("unreadable_signal", f"{path}: MAT v4 header does not match the "
                             f".hea: {', '.join(problems)}")


def _read_with_wfdb(hea_path, hdr):
    import wfdb

    for name in set(hdr.files):
        if not (hea_path.parent / name).exists():
            raise BadRecordError("missing_signal_file", f"{hea_path.parent / name} does not exist")
    try:
        rec = wfdb.rdrecord(str(hea_path.with_suffix("")), physical=False)
    except Exception as exc:  # wfdb raises many types for damaged files
        raise BadRecordError("unreadable_signal", f"{hea_path}: {type(exc).__name__}: {exc}") \
            from None
    return np.asarray(rec.d_signal, dtype=np.int64).T


def to_canonical_leads(sig, leads, path="", notes=None):
    """Reorder ``(L, T)`` rows to ``LEADS`` by name.

    Channels beyond the 12 standard leads (PTB's Frank leads vx, vy, vz) are dropped, and a
    lead given twice with the same samples is taken once; each appends ``(reason, detail)`` to
    ``notes``.
    A missing standard lead, or one given twice with different samples, is a bad record.
    """
    index, extra, repeated = {}, [], []
    for i, name in enumerate(leads):
        canon = canonical_lead(name)
        if canon is None:
            extra.append(name)
        elif canon in index:
            if not np.array_equal(sig[index[canon]], sig[i], equal_nan=True):
                raise BadRecordError("duplicate_lead", f"{path}: lead {canon} twice, with "
                                     f"different samples")
            repeated.append(canon)
        else:
            index[canon] = i
    missing = [name for name in LEADS if name not in index]
    if missing:
        what = f"; other channels: {extra}" if extra else ""
        raise BadRecordError("missing_lead", f"{path}: no {', '.join(missing)}{what}")
    if notes is not None and extra:
        notes.append(("extra_channels_dropped", f"{path}: channels beyond the 12 leads: {extra}"))
    if notes is not None and repeated:
        notes.append(("duplicate_lead_taken_once", f"{path}: identical copies of {repeated}"))
    return sig[[index[name] for name in LEADS]]


# ---------------------------------------------------------------- folds

def fold_from_id(key, n_folds=10):
    """Deterministic fold 1..n_folds from an id (sha256, so it is stable across machines)."""
    return int(hashlib.sha256(str(key).encode()).hexdigest(), 16) % n_folds + 1
