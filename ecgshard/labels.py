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


# ---------------------------------------------------------------- relations between classes

# Groups of codes that name one concept, or a concept and its parent, closely enough that
# holding out one while training on another would leak the "unseen" class into training.
# SNOMED pairs are the ones the Challenge 2021 scores as one diagnosis; SCP groups come from
# PTB-XL's statement hierarchy (premature complexes and their patterns, T-wave and ST parents).
SNOMED_SYNONYMS = (
    ("713427006", "59118001"),      # complete RBBB / RBBB
    ("733534002", "164909002"),     # complete LBBB / LBBB
    ("284470004", "63593006"),      # PAC / supraventricular premature beats
    ("427172004", "17338001"),      # PVC / ventricular premature beats
)
EQUIVALENT_GROUPS = SNOMED_SYNONYMS + (
    ("164889003", "195080001", "426749004", "282825002", "314208002"),  # AF and its kinds
    ("PVC", "PRC(S)"), ("PAC", "PRC(S)"), ("PVC", "BIGU"), ("PVC", "TRIGU"),
    ("PAC", "SVARR"), ("SVTAC", "PSVT"),
    ("LVH", "VCLVH"), ("HVOLT", "VCLVH"),
    ("TAB_", "NT_"), ("TAB_", "INVT"), ("TAB_", "LOWT"), ("NDT", "NT_"),
    ("NST_", "STD_"), ("NST_", "STE_"),
)

# PTB-XL diagnostic subclasses that are catch-alls rather than one concept.
_CATCH_ALL_SUBCLASSES = {"STTC", "NORM"}


def related_codes(code, classes):
    """Codes that must be held out together with ``code`` (itself excluded).

    PTB-XL diagnostic statements sharing a subclass (IMI: inferior, inferolateral,
    inferoposterior MI...) are one group; so is every group of ``EQUIVALENT_GROUPS``.
    """
    related = set()
    for group in EQUIVALENT_GROUPS:
        if code in group:
            related.update(group)
    by_code = {c["code"]: c for c in classes}
    sub = by_code.get(code, {}).get("subclass", "")
    if sub and sub not in _CATCH_ALL_SUBCLASSES:
        related.update(c["code"] for c in classes if c.get("subclass") == sub)
    related.discard(code)
    return {c for c in related if c in by_code}


def resolve_holdout(holdout, classes, expand=False):
    """Check a holdout list against class relations.

    Returns the full holdout set. Without ``expand``, a holdout that leaves a related code among
    the training classes is refused with a message naming the group; with ``expand`` the whole
    group is held out (and logged).
    """
    known = {c["code"] for c in classes}
    unknown = [c for c in holdout if c not in known]
    if unknown:
        raise ECGShardError(f"holdout codes not in the vocabulary: {unknown} (codes are matched "
                            f"exactly, e.g. 'CLBBB' or '164909002')")
    full = set(holdout)
    problems = []
    for code in holdout:
        left = related_codes(code, classes) - full
        if left and not expand:
            problems.append(f"{code} -> {sorted(left)}")
        full |= left if expand else set()
    if problems:
        raise ECGShardError(
            "held-out classes have synonyms, parents or near-duplicates left among the training "
            "classes, so they would not be unseen: " + "; ".join(problems) +
            ". Hold out the whole group (add them, or pass --holdout-expand).")
    added = sorted(full - set(holdout))
    if added:
        log.warning("holdout expanded with related classes: %s", added)
    return sorted(full)


# A default PTB-XL holdout spanning rhythm (SBRAD), form (LVOLT, the PVC group) and
# diagnostic statements (the fascicular-block group, IVCD), each with dozens of positives in
# fold 10 of the full database.
DEFAULT_PTBXL_HOLDOUT = ("SBRAD", "LVOLT", "PVC", "PRC(S)", "BIGU", "TRIGU", "LAFB", "LPFB",
                         "IVCD")

# SNOMED CT (Challenge 2021) -> SCP (PTB-XL) for the same concept: marks Experiment B target
# classes as seen or unseen. Only same-concept pairs; a parent is not a match.
SNOMED_TO_SCP = {
    "426783006": "SR", "164889003": "AFIB", "164890007": "AFLT", "427084000": "STACH",
    "426177001": "SBRAD", "427393009": "SARRH", "10370003": "PACE", "426761007": "SVTAC",
    "67198005": "PSVT", "270492004": "1AVB", "195042002": "2AVB", "27885002": "3AVB",
    "713427006": "CRBBB", "59118001": "CRBBB", "733534002": "CLBBB", "164909002": "CLBBB",
    "713426002": "IRBBB", "251120003": "ILBBB", "445118002": "LAFB", "445211001": "LPFB",
    "698252002": "IVCD", "74390002": "WPW", "164873001": "LVH", "89792004": "RVH",
    "67741000119109": "LAO/LAE", "446358003": "RAO/RAE", "251146004": "LVOLT",
    "111975006": "LNGQT", "164947007": "LPR", "284470004": "PAC", "63593006": "PAC",
    "427172004": "PVC", "17338001": "PVC", "164917005": "QWAVE", "164951009": "ABQRS",
    "59931005": "INVT", "164934002": "TAB_", "429622005": "STD_", "164931005": "STE_",
    "55930002": "NST_", "251173003": "BIGU", "11157007": "BIGU", "251180001": "TRIGU",
    "54329005": "AMI",
}


# CODE-15's six label columns -> SCP.
CODE15_TO_SCP = {"1dAVb": "1AVB", "RBBB": "CRBBB", "LBBB": "CLBBB", "SB": "SBRAD", "AF": "AFIB",
                 "ST": "STACH"}
SAME_CONCEPT_AS_SCP = {**SNOMED_TO_SCP, **CODE15_TO_SCP}


def seen_status(target_codes, train_codes):
    """For each target code: the training code of the same concept, or None (unseen).

    A target is seen if it is itself a training code, or maps (``SAME_CONCEPT_AS_SCP``) to one,
    or is a synonym (``SNOMED_SYNONYMS``) of one.
    """
    train = set(train_codes)
    status = {}
    for code in target_codes:
        match = None
        if code in train:
            match = code
        elif SAME_CONCEPT_AS_SCP.get(code) in train:
            match = SAME_CONCEPT_AS_SCP[code]
        else:
            for group in SNOMED_SYNONYMS:
                if code in group:
                    match = next((g for g in group if g in train), None) or match
        status[code] = match
    return status


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
