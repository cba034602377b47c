"""Class vocabularies: PTB-XL SCP statements, Challenge 2021 SNOMED CT codes, and the
relations between classes that zero-shot evaluation must respect.

Classes are always identified by code (``"CLBBB"``, ``"164909002"``), never by position or by a
substring of a name.
"""
from __future__ import annotations

import csv
import json
import logging
from importlib import resources
from pathlib import Path

from .errors import ECGShardError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- PTB-XL


def ptbxl_vocabulary(scp):
    """Class dicts for every SCP statement of ``scp_statements.csv`` (a pandas frame)."""
    classes = []
    for code, row in scp.iterrows():
        kinds = [k for k in ("diagnostic", "form", "rhythm") if _truthy(row.get(k))]
        classes.append({
            "code": str(code),
            "name": str(row["description"]),
            "description": _text(row.get("SCP-ECG Statement Description")),
            "kind": kinds,
            "superclass": _text(row.get("diagnostic_class")),
            "subclass": _text(row.get("diagnostic_subclass")),
        })
    return classes


def _truthy(value):
    try:
        return float(value) == 1.0
    except (TypeError, ValueError):
        return False


def _text(value):
    return "" if value is None or value != value else str(value)


# ---------------------------------------------------------------- SNOMED CT (Challenge 2021)

def snomed_table(path=None):
    """SNOMED code -> {abbreviation, name, scored}.

    Without ``path`` the package's own table (``ecgshard/data/snomed_ct.csv``). ``path`` may also
    be one of the official Challenge mapping CSVs (``dx_mapping_scored.csv`` /
    ``dx_mapping_unscored.csv``: columns ``Dx, SNOMEDCTCode, Abbreviation``), or several of them
    joined by commas.
    """
    if path is None:
        text = resources.files("ecgshard").joinpath("data/snomed_ct.csv").read_text()
        return _parse_snomed(text.splitlines(), "package table")
    table = {}
    for one in str(path).split(","):
        one = Path(one)
        if not one.exists():
            raise ECGShardError(f"--dx-map: no file {one}")
        table.update(_parse_snomed(one.read_text().splitlines(), one, scored=
                                   None if "unscored" not in one.name else False))
    return table


def _parse_snomed(lines, origin, scored=None):
    table = {}
    for row in csv.DictReader(lines):
        if "SNOMEDCTCode" in row:        # the official Challenge CSVs
            code, abbr, name = row["SNOMEDCTCode"], row["Abbreviation"], row["Dx"]
            is_scored = scored if scored is not None else True
        elif "code" in row:
            code, abbr, name = row["code"], row.get("abbreviation", ""), row["name"]
            is_scored = str(row.get("scored", "0")).strip() in ("1", "True", "true")
        else:
            raise ECGShardError(f"{origin}: a SNOMED table needs the columns code,name "
                                f"(or the Challenge's SNOMEDCTCode,Abbreviation,Dx)")
        table[code.strip()] = {"abbreviation": abbr.strip(), "name": " ".join(name.split()),
                               "scored": is_scored}
    return table


def snomed_vocabulary(table, counts):
    """Class dicts for the codes found in records (``counts``: code -> n); codes absent from
    the table are kept (labels are never dropped) but flagged ``known: False``."""
    classes = []
    for code in sorted(counts, key=lambda c: (-counts[c], c)):
        entry = table.get(code)
        classes.append({
            "code": code,
            "name": entry["name"] if entry else code,
            "abbreviation": entry["abbreviation"] if entry else "",
            "scored": bool(entry and entry["scored"]),
            "known": entry is not None,
        })
    return classes


# ---------------------------------------------------------------- plain vocabulary files

def load_vocab_file(path):
    """Classes from a CSV (columns ``code,name`` and optional ``description``) or a JSON list of
    ``{"code": ..., "name": ...}`` — lets a user embed a dataset's classes without building it."""
    path = Path(path)
    if not path.exists():
        raise ECGShardError(f"vocabulary file {path} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        rows = data["classes"] if isinstance(data, dict) else data
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    classes = []
    for row in rows:
        if "code" not in row or "name" not in row:
            raise ECGShardError(f"{path}: every class needs a code and a name, got {row}")
        classes.append({"code": str(row["code"]).strip(), "name": str(row["name"]).strip(),
                        "description": str(row.get("description") or "").strip()})
    return classes
