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


# ---------------------------------------------------------------- holdouts

def resolve_holdout(holdout, classes, expand=False):
    """The sorted full holdout of ``close_holdout``."""
    return sorted(close_holdout(holdout, classes, expand))


def close_holdout(holdout, classes, expand=False):
    """Close a holdout under the class relations of ``concepts`` (transitively), over every
    class of ``classes`` whatever its count (a rare relative's records would otherwise be
    trained on, and the closure would stop at it).

    Returns ``{code: reason}`` of the full holdout (``ConceptGraph.closure``). Without
    ``expand``, a holdout that would leave a related class among them is refused with a
    message naming the whole closure and why each member belongs; with ``expand`` the closure
    is held out (and logged).
    """
    from . import concepts

    known = {c["code"] for c in classes}
    unknown = [c for c in holdout if c not in known]
    if unknown:
        raise ECGShardError(f"holdout codes not in the vocabulary: {unknown} (codes are matched "
                            f"exactly, e.g. 'CLBBB' or '164909002')")
    reasons = concepts.load().closure(list(holdout), known)
    added = {c: why for c, why in reasons.items() if why is not None}
    if added and not expand:
        raise ECGShardError(
            "held-out classes have synonyms, parents, children or near-siblings left among the "
            "training classes, so they would not be unseen. The closed holdout is "
            f"{sorted(reasons)}; added: " + "; ".join(f"{c} ({why})" for c, why in
                                                       sorted(added.items())) +
            ". Hold out the whole closure (add them, or pass --holdout-expand); "
            "`ecgshard relations CODE` shows why.")
    if added:
        log.warning("holdout closed with related classes: %s",
                    ", ".join(f"{c} ({why})" for c, why in sorted(added.items())))
    return reasons


# A default PTB-XL holdout spanning rhythm (SBRAD), form (LVOLT, the premature-complex family)
# and diagnostic statements (the fascicular blocks, IVCD): classes read off a measurement
# (rate, voltage, QRS width, axis, prematurity). Its counts are judged on training and
# validation folds only, never on a test fold: in folds 1-8 of the real dev tree SBRAD 36,
# LVOLT 21, PVC 71, PAC 28, SVARR 15, LAFB/LPFB 147, IVCD 63 records (the family's rare
# members ride along because the closure needs them). It is closed under ``concepts`` (tested), so
# ``fit --holdout default`` runs without --holdout-expand; LAFB/LPFB is the subclass-level
# name of the fascicular blocks in trees labelled by diagnostic subclass.
DEFAULT_PTBXL_HOLDOUT = ("SBRAD", "LVOLT", "PVC", "PRC(S)", "PAC", "SVARR", "BIGU", "TRIGU",
                         "LAFB", "LPFB", "LAFB/LPFB", "IVCD")


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
