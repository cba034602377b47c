"""SPH and CODE-15 layouts, written tiny with h5py and pandas, through build."""
import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import identity_signal
from ecgshard import build, shards
from ecgshard.errors import ECGShardError


def _build(src, out, fmt):
    return build.run(build.BuildConfig(source_dir=str(src), out_dir=str(out), format=fmt,
                                       workers=1))


def _records(out):
    manifest = shards.load_manifest(out)
    codes = shards.class_codes(manifest)
    rows = {}
    for path in shards.shard_paths(out, manifest):
        with shards.open_shard(path) as f:
            for i, rec in enumerate(shards.read_strings(f[shards.RECORD_ID])):
                rows[rec] = {"labels": {codes[j] for j in np.flatnonzero(f[shards.LABELS][i])},
                             "signal": f[shards.SIGNAL][i].astype(float),
                             "fold": int(f[shards.FOLD][i]),
                             "patient": shards.read_strings(f[shards.PATIENT_ID])[i],
                             "length": int(f[shards.LENGTH][i])}
    return manifest, rows


def test_sph_layout(tmp_path):
    src = tmp_path / "sph"
    (src / "records").mkdir(parents=True)
    pd.DataFrame({"Category": ["A", "B", "C"], "Code": [1, 22, 50],
                  "Description": ["Normal ECG", "Sinus bradycardia", "Atrial fibrillation"]}
                 ).to_csv(src / "code.csv", index=False)
    meta = pd.DataFrame({"ECG_ID": ["A00001", "A00002", "A00003", "A00004", "A00005"],
                         "AHA_Code": ["1", "22;50+346", "50", "999", "1"],
                         "Patient_ID": ["P1", "P1", "P2", "P3", "P4"],
                         "Age": [50, 50, 61, 70, 33], "Sex": ["M", "M", "F", "F", "M"],
                         "N": [5000, 7500, 5000, 5000, 5000], "Date": ["2020-01-01"] * 5})
    meta.to_csv(src / "metadata.csv", index=False)
    for k, rec in enumerate(["A00001", "A00002", "A00003", "A00004", "A00099"], start=1):
        with h5py.File(src / "records" / f"{rec}.h5", "w") as f:
            f["ecg"] = identity_signal(k, 500, seconds=15 if k == 2 else 10).astype(np.float32)
    _build(src, tmp_path / "out", "sph")
    manifest, rows = _records(tmp_path / "out")
    assert set(rows) == {"A00001", "A00002", "A00003", "A00004"}
    assert rows["A00002"]["labels"] == {"22", "50"}           # modifier 346 dropped
    assert rows["A00004"]["labels"] == {"999"}
    assert rows["A00001"]["fold"] != 0 and rows["A00001"]["patient"] == "P1"
    assert rows["A00001"]["fold"] == rows["A00002"]["fold"]   # patient-wise folds
    np.testing.assert_allclose(rows["A00001"]["signal"][:, 100:-100],
                               identity_signal(1, 100)[:, 100:-100], atol=0.03)
    by = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert by == {"A00005": "missing_signal_file", "A00099": "no_metadata_row"}
    assert manifest["unknown_codes"] == {"999": 1}
    names = {c["code"]: c["name"] for c in manifest["classes"]}
    assert names["22"] == "Sinus bradycardia"


def test_code15_layout(tmp_path):
    src = tmp_path / "code15"
    src.mkdir()
    exams = pd.DataFrame({
        "exam_id": [101, 102, 103, 104], "age": [40, 50, 60, 70],
        "is_male": [True, False, True, False], "nn_predicted_age": [41, 49, 62, 69],
        "1dAVb": [False, False, False, False], "RBBB": [True, False, False, False],
        "LBBB": [False, False, False, False], "SB": [False, True, False, False],
        "ST": [False, False, False, False], "AF": [False, True, False, False],
        "patient_id": [7, 7, 8, 9], "death": ["", "", "", ""], "timey": ["", "", "", ""],
        "normal_ecg": [False, False, True, False],
        "trace_file": ["exams_part0.hdf5"] * 3 + ["exams_part1.hdf5"]})
    exams.to_csv(src / "exams.csv", index=False)
    tr = np.zeros((4, 4096, 12), np.float32)
    # 10 s, padded both sides; the sine starts one sample in, so no edge sample is exactly 0
    tr[0, 48:4048] = identity_signal(1, 400, seconds=10.01)[:, 1:4001].T
    tr[1, 648:3448] = identity_signal(2, 400, seconds=7).T     # 7 s
    tr[2, 648:3448] = identity_signal(3, 400, seconds=7).T
    # row 3: all zero (padding only), exam 999 is not in exams.csv
    with h5py.File(src / "exams_part0.hdf5", "w") as f:
        f["tracings"] = tr
        f["exam_id"] = np.array([101, 102, 103, 999])
    _build(src, tmp_path / "out", "code15")
    manifest, rows = _records(tmp_path / "out")
    assert set(rows) == {"101", "102", "103"}
    assert rows["101"]["labels"] == {"RBBB"} and rows["102"]["labels"] == {"SB", "AF"}
    assert rows["103"]["labels"] == set()                      # a negative, not a skip
    assert rows["101"]["length"] == 1000 and rows["102"]["length"] == 700
    t = np.arange(1000) / 100 + 1 / 400                        # the one-sample offset
    want = 0.1 * (1 + np.arange(12)[:, None] / 12) * np.sin(2 * np.pi * 10 * t)
    np.testing.assert_allclose(rows["101"]["signal"][:, 100:-100], want[:, 100:-100], atol=0.01)
    assert rows["101"]["fold"] == rows["102"]["fold"]          # same patient
    by = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert by == {"104": "missing_signal_file", "999": "no_metadata_row"}


def test_missing_tables_are_clear_errors(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ECGShardError, match="metadata.csv does not exist"):
        _build(tmp_path / "x", tmp_path / "o1", "sph")
    with pytest.raises(ECGShardError, match="exams.csv does not exist"):
        _build(tmp_path / "x", tmp_path / "o2", "code15")
