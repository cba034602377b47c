"""The database registry: a database is one module (one Database subclass) that build,
download and the CLI all find."""
import pkgutil
from pathlib import Path

import numpy as np
import pytest

from ecgshard import build, databases, download, readers, shards
from ecgshard.databases.base import Database, Item, skip
from ecgshard.errors import BadRecordError, ECGShardError


def test_every_module_of_the_package_registers_its_database():
    modules = {m.name for m in pkgutil.iter_modules(databases.__path__)} - {"base"}
    assert modules == {"ptbxl", "cinc2021", "sph", "code15", "mimic"}
    assert set(databases.DATABASES) == {"ptbxl", "cinc2021", "sph", "code15", "mimic-iv-ecg"}
    for name, db in databases.DATABASES.items():
        assert db.name == name and db.title and db.fold_rule
    assert download.downloadable() == ["cinc2021", "ptbxl"]
    with pytest.raises(ECGShardError, match="choose from"):
        databases.get("no-such-database")


@pytest.fixture
def npy_database():
    """A fifth database, defined the way a new module would define it: records are
    ``<id>.npy`` (12, T) arrays in mV at 250 Hz, labels a ``labels.csv`` of id,patient,codes."""

    class NpyFolder(Database):
        name = "npy-folder"
        title = "a folder of .npy records"
        fold_rule = "1 + sha256(patient) mod 10"

        def label_rule(self, cfg):
            return "the codes column, ';'-separated"

        def read(self, item):
            try:
                sig = np.load(item.path)
            except (OSError, ValueError) as exc:
                raise BadRecordError("unreadable_signal", f"{item.path}: {exc}") from None
            return sig.astype(np.float32), 250.0, list(shards.LEADS), "sha-of-" + item.record_id

        def plan(self, cfg):
            source = Path(cfg.source_dir)
            items, skipped, counts = [], [], {}
            for line in (source / "labels.csv").read_text().splitlines()[1:]:
                rec, patient, codes = line.split(",")
                it = Item(record_id=rec, path=str(source / f"{rec}.npy"), patient_id=patient,
                          fold=readers.fold_from_id(patient), source="npy", age=float("nan"),
                          sex=-1, codes={c: 100.0 for c in codes.split(";") if c})
                if not it.codes:
                    skipped.append(skip(it, "no_labels"))
                    continue
                for c in it.codes:
                    counts[c] = counts.get(c, 0) + 1
                items.append(it)
            return {"classes": [{"code": c, "name": c} for c in sorted(counts)], "items": items,
                    "skipped": skipped, "unknown_codes": {}, "rate": None, "checksums": {}}

    yield Database.registry["npy-folder"]
    del Database.registry["npy-folder"]


def test_a_new_database_is_one_subclass_that_build_uses(npy_database, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = ["id,patient,codes"]
    for k in range(12):
        t = np.arange(2500) / 250
        np.save(src / f"r{k}.npy", 0.1 * (k + 1) * np.sin(2 * np.pi * 5 * t)[None].repeat(12, 0))
        lines.append(f"r{k},p{k // 2},{'AF' if k % 3 == 0 else 'SR'}" if k != 11 else
                     f"r{k},p{k // 2},")
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    manifest = build.run(build.BuildConfig(source_dir=str(src), out_dir=str(tmp_path / "out"),
                                           format="npy-folder", workers=1))
    assert manifest["n_records"] == 11 and manifest["skip_counts"] == {"no_labels": 1}
    assert manifest["params"]["label_rule"] == "the codes column, ';'-separated"
    assert manifest["params"]["fold_rule"] == "1 + sha256(patient) mod 10"
    assert {c["code"]: c["count"] for c in manifest["classes"]} == {"AF": 4, "SR": 7}
    assert manifest["n_samples"] == 1000 and manifest["fs"] == 100      # resampled 250 -> 100
