"""What every source database provides, and the pieces their planners share.

A database is a ``Database`` subclass in a module of ``ecgshard.databases``: its ``name`` is the
``--format`` value, ``plan`` lists its records from its own metadata, ``read`` returns one raw
record, ``label_rule`` and ``fold_rule`` say in words what the manifest records, and the
optional download and synthetic-data hooks serve ``ecgshard download`` and ``ecgshard synth``.
Defining the subclass registers it; ``build``, ``download`` and the CLI read the registry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import readers
from ..errors import BadRecordError, ECGShardError


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
    # measurements the source ships (ecgshard.measure names -> value; MIMIC-IV-ECG's machine
    # measurements): build stores them in place of its own, as the manifest records
    measured: dict = field(default_factory=dict)


class Database:
    """A source database (see the module docstring); subclasses set the attributes."""

    name = ""                 # the --format value; a subclass with a name is registered
    title = ""
    fold_rule = ""            # how records get folds, in words (the manifest keeps it)
    download_url = None       # file tree with "{version}", for `ecgshard download`
    download_version = None
    synthetic = None          # what `ecgshard synth -n` counts, where a demo layout exists
    shipped_measurements = None   # where the source's own measurements come from, in words
    registry = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            Database.registry[cls.name] = cls()

    def plan(self, cfg):
        """The build plan: ``{"classes", "items", "skipped", "unknown_codes", "rate",
        "checksums"}`` from the database's metadata (``cfg``: the BuildConfig)."""
        raise NotImplementedError

    def label_rule(self, cfg):
        """Which codes of a record are its labels, in words."""
        raise NotImplementedError

    def read(self, item):
        """One raw record: ``(sig (L, T) float32 mV, fs, lead names, sha256 of its bytes)``."""
        sig, fs, leads, _, digest = readers.read_wfdb(item.path)
        return sig, fs, leads, digest

    def wanted(self, path, cfg):
        """Whether a file of the download tree is needed (``cfg``: the DownloadConfig)."""
        return True

    def write_synthetic(self, out_dir, n, seed):
        """Write ``n`` synthetic records (see ``synthetic``) in this layout; returns rows."""
        raise ECGShardError(f"no synthetic {self.name} layout; choose from "
                            f"{[n for n, db in Database.registry.items() if db.synthetic]}")


# ---------------------------------------------------------------- planners' shared pieces

def skip(it, reason, detail=""):
    return {"record_id": it.record_id, "path": str(it.path), "source": it.source,
            "reason": reason, "detail": detail}


def orphan(record_id, path, source, table):
    """A signal on disk that its database's metadata table does not list."""
    return {"record_id": record_id, "path": str(path), "source": source,
            "reason": "no_metadata_row", "detail": f"signal has no row in {table}"}


def find(root, suffix):
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


def read_header_text(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise BadRecordError("unreadable_header", f"{path}: {exc.strerror or exc}") from None


def read_csv(path, what):
    import pandas as pd

    if not Path(path).exists():
        raise ECGShardError(f"{path} does not exist: {what}")
    try:
        return pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:      # pandas' EmptyDataError and parser
        raise ECGShardError(f"{path} cannot be read as a CSV ({exc}): {what}; download it "
                            f"again") from None


def id_text(value):
    try:
        f = float(value)
        return str(int(f)) if f == int(f) else str(value)
    except (TypeError, ValueError):
        return str(value)


def int_or(value, default):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def float_or(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
