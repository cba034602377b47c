"""MIMIC-IV-ECG: machine statements as classes, folds by subject, the layout's quirks."""
import h5py
import numpy as np
import pandas as pd
import pytest
import wfdb

from ecgshard import build, readers, shards, synth
from ecgshard.config import BuildConfig
from ecgshard.databases.mimic import report_statements


def test_statements_are_normalised_and_continuations_joined():
    fields = ["--- Abnormal ECG ---", "Sinus rhythm.", "LEFT AXIS  DEVIATION", "Inferior infarct",
              "-- age undetermined", None, float("nan"), "", "Sinus rhythm"]
    assert report_statements(fields) == ["abnormal ecg", "sinus rhythm", "left axis deviation",
                                         "inferior infarct age undetermined"]


def test_build_round_trips_statements_folds_and_leads(tmp_path):
    rows = synth.write_mimic_iv_ecg(tmp_path / "raw", n_records=60, seed=3)
    manifest = build.run(BuildConfig(source_dir=str(tmp_path / "raw"),
                                     out_dir=str(tmp_path / "s"), format="mimic-iv-ecg", fs=500,
                                     band=None, min_count=2, workers=1))
    codes = shards.class_codes(manifest)
    # What each study should carry, from the statements the writer meant (not the parser).
    meant = {str(r["study_id"]): {synth.MIMIC_STATEMENTS[c].lower() for c in r["scp"]
                                  if c in synth.MIMIC_STATEMENTS}
             | {"normal ecg" if "NORM" in r["scp"] else "abnormal ecg"} for r in rows}
    subject = {str(r["study_id"]): str(r["subject_id"]) for r in rows}
    skipped = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert skipped[str(rows[3]["study_id"])] == "no_machine_measurements"
    assert all(skipped[str(r["study_id"])] == "flat_lead" for r in rows if r["flat_lead"])
    rare = manifest["rare_classes"]
    assert set(codes).isdisjoint(rare) and all(n < 2 for n in rare.values())
    seen = 0
    for path in shards.shard_paths(tmp_path / "s", manifest):
        with h5py.File(path, "r") as f:
            ids = shards.read_strings(f[shards.RECORD_ID])
            labels, folds = f[shards.LABELS][...], f[shards.FOLD][...]
            patients = shards.read_strings(f[shards.PATIENT_ID])
            signal = f[shards.SIGNAL][...]
        for i, study in enumerate(ids):
            got = {c for c, v in zip(codes, labels[i]) if v}
            assert got == meant[study] - set(rare), study
            assert patients[i] == subject[study]
            assert folds[i] == readers.fold_from_id(subject[study])
            seen += 1
        # leads by name: the cart writes aVF before aVL; shards hold the canonical order
        row = next(r for r in rows if str(r["study_id"]) == ids[0])
        raw = wfdb.rdrecord(str(tmp_path / "raw" / "files" / f"p{str(row['subject_id'])[:4]}" /
                                f"p{row['subject_id']}" / f"s{row['study_id']}" /
                                str(row["study_id"])))
        for lead in ("aVL", "aVF"):
            np.testing.assert_allclose(signal[0, shards.LEADS.index(lead)].astype(np.float32),
                                       raw.p_signal[:, raw.sig_name.index(lead)], atol=2e-3)
    assert seen == manifest["n_records"] == len(rows) - len(skipped)


def test_a_study_with_two_statement_rows_is_a_named_skip_and_an_empty_table_an_error(tmp_path):
    """Low group: which of two rows is the study's cannot be told, so neither labels it; an
    empty machine_measurements.csv is one clear error."""
    import pandas as pd
    import pytest

    from ecgshard.errors import ECGShardError

    rows = synth.write_mimic_iv_ecg(tmp_path / "raw", n_records=12, seed=3)
    table = tmp_path / "raw" / "machine_measurements.csv"
    reports = pd.read_csv(table)
    twice = reports[reports["study_id"] == rows[0]["study_id"]].assign(report_0="Atrial flutter")
    pd.concat([reports, twice]).to_csv(table, index=False)
    cfg = BuildConfig(source_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "s"),
                      format="mimic-iv-ecg", fs=500, band=None, min_count=1, workers=1)
    manifest = build.run(cfg)
    skipped = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert skipped[str(rows[0]["study_id"])] == "duplicate_study_row"
    table.write_text("")
    with pytest.raises(ECGShardError, match="machine_measurements.csv cannot be read as a CSV"):
        build.run(cfg)


def test_the_carts_measurements_replace_the_measured_ones(tmp_path):
    synth.write_mimic_iv_ecg(tmp_path / "raw", n_records=40, seed=3)
    table = pd.read_csv(tmp_path / "raw" / "machine_measurements.csv")
    manifest = build.run(build.BuildConfig(source_dir=str(tmp_path / "raw"),
                                           out_dir=str(tmp_path / "s"), format="mimic-iv-ecg",
                                           fs=500, workers=1, min_count=1))
    assert "machine_measurements.csv" in manifest["measurements"]["source"]
    by_study = {str(r.study_id): r for r in table.itertuples()}
    for path in shards.shard_paths(tmp_path / "s", manifest):
        with h5py.File(path) as f:
            m = shards.read_measurements(f, ["heart_rate", "pr", "qrs", "qrs_axis", "qt"])
            ids = shards.read_strings(f[shards.RECORD_ID])
        for i, study in enumerate(ids):
            row = by_study[study]
            assert m["heart_rate"][i] == pytest.approx(60000 / row.rr_interval, rel=1e-5)
            assert m["qrs"][i] == pytest.approx(row.qrs_end - row.qrs_onset)
            assert m["qt"][i] == pytest.approx(row.t_end - row.qrs_onset)
            assert m["qrs_axis"][i] == pytest.approx(row.qrs_axis)
            if row.p_onset == 29999:                # "not measured": ecgshard's own, or NaN
                assert np.isnan(m["pr"][i]) or 0 < m["pr"][i] < 400
            else:
                assert m["pr"][i] == pytest.approx(row.qrs_onset - row.p_onset)


def test_machine_measurements_take_only_plausible_values():
    from ecgshard.databases.mimic import machine_measurements

    got = machine_measurements({"rr_interval": 800, "p_onset": 29999, "qrs_onset": 200,
                                "qrs_end": 290, "t_end": 600, "qrs_axis": 350})
    assert got["heart_rate"] == pytest.approx(75) and "pr" not in got
    assert got["qrs"] == 90 and got["qt"] == 400
    assert got["qtc"] == pytest.approx(400 / 0.8 ** 0.5)
    assert got["qrs_axis"] == pytest.approx(-10)
    assert machine_measurements({"rr_interval": "", "qrs_axis": 29999}) == {}
