"""The PhysioNet/CinC Challenge 2021 collection: ``training/<source>/g*/<record>.{hea,mat}``
(MAT v4 int16, header ``16+24``) with ``#Age``, ``#Sex`` and SNOMED CT ``#Dx`` comments, from
CPSC 2018, CPSC-Extra, INCART, PTB, PTB-XL, Georgia, Chapman-Shaoxing and Ningbo."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from .. import labels, readers
from .. import shards
from ..errors import BadRecordError, ECGShardError
from .. import synth
from .base import Database, Item, find, float_or, read_header_text, skip

log = logging.getLogger(__name__)

# Record-name prefixes are the Challenge's; "JS" is Chapman-Shaoxing up to JS10646, then Ningbo.
_PREFIXES = (("HR", "PTB-XL"), ("JS", None), ("A", "CPSC2018"), ("Q", "CPSC-Extra"),
             ("I", "INCART"), ("S", "PTB"), ("E", "Georgia"))


def record_source_from_name(name, parent=""):
    """The source database of a Challenge record, from its name (``parent`` where unknown)."""
    for prefix, source in _PREFIXES:
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            if source is None:
                return "Chapman-Shaoxing" if int(name[2:]) <= 10646 else "Ningbo"
            return source
    return parent or "unknown"


class CinC2021(Database):
    name = "cinc2021"
    title = "PhysioNet/CinC Challenge 2021"
    fold_rule = "1 + sha256(record name) mod 10 (Challenge headers carry no patient id)"
    download_url = "https://physionet.org/files/challenge-2021/{version}/"
    download_version = "1.0.3"
    synthetic = "records per source"

    def label_rule(self, cfg):
        return "every SNOMED CT code in #Dx is a label"

    def wanted(self, path, cfg):
        parts = path.split("/")
        if parts[0] == "training" and len(parts) > 2 and cfg.sources:
            return parts[1] in cfg.sources
        return True

    def write_synthetic(self, out_dir, n, seed):
        return synth.write_cinc2021(out_dir, n_per_source=n, seed=seed)

    def plan(self, cfg):
        source = Path(cfg.source_dir)
        table = labels.snomed_table(cfg.dx_map)
        heas = find(source, ".hea")
        if not heas:
            raise ECGShardError(f"{source} holds no WFDB .hea files; point --format cinc2021 at "
                                f"the Challenge 2021 training/ folder (or one source inside it), "
                                f"which `ecgshard download cinc2021 DEST` fetches")
        items, skipped = [], []
        counts, unknown = Counter(), Counter()
        for hea in heas:
            name = hea.stem
            it = Item(record_id=name, path=str(hea), patient_id=name,
                      fold=readers.fold_from_id(name),
                      source=record_source_from_name(name, hea.parent.parent.name),
                      age=float("nan"), sex=-1)
            try:
                hdr = readers.parse_header(read_header_text(hea), hea)
            except BadRecordError as exc:
                skipped.append(skip(it, exc.reason, exc.detail))
                continue
            it.age = float_or(hdr.comments.get("Age"))
            it.sex = {"male": 0, "m": 0, "female": 1, "f": 1}.get(
                hdr.comments.get("Sex", "").strip().lower(), -1)
            dx = [c.strip() for c in hdr.comments.get("Dx", "").split(",") if c.strip()]
            if not dx:
                skipped.append(skip(it, "no_labels", "header has no #Dx codes"))
                continue
            it.codes = {c: 100.0 for c in dx}
            counts.update(list(it.codes))
            unknown.update(c for c in it.codes if c not in table)
            items.append(it)
        with_header = {h.with_suffix(".mat") for h in heas}
        for mat in find(source, ".mat"):
            if mat not in with_header:
                skipped.append({"record_id": mat.stem, "path": str(mat),
                                "source": record_source_from_name(mat.stem,
                                                                  mat.parent.parent.name),
                                "reason": "no_header", "detail": f"{mat} has no .hea beside it"})
        if unknown:
            log.warning("%d labels use %d SNOMED codes that are not in the code table (kept, "
                        "named by their code): %s", sum(unknown.values()), len(unknown),
                        dict(unknown.most_common(10)))
        checksums = {}
        if cfg.dx_map:
            checksums = {p: shards.sha256_file(p) for p in str(cfg.dx_map).split(",")}
        return {"classes": labels.snomed_vocabulary(table, counts), "items": items,
                "skipped": skipped, "unknown_codes": dict(unknown), "rate": None,
                "checksums": checksums}
