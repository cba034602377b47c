"""Using a trained run: predict, the Python API, embed and probe."""
import csv
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ecgshard import BadRecordError, embed, predict, probe, shards, zeroshot
from ecgshard.config import EmbedConfig, PredictConfig, ProbeConfig, ZeroShotConfig

ROOT = Path(__file__).resolve().parents[1]


def _raw_paths(demo_data, ids):
    db = pd.read_csv(demo_data / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id")
    return [demo_data / "ptbxl" / (db.loc[int(i), "filename_lr"] + ".hea") for i in ids]


def test_predict_on_raw_records_equals_zeroshot_on_their_shards(demo_data, demo_run, demo_text,
                                                                 tmp_path):
    codes = ["LVOLT", "NORM", "CLBBB"]
    zeroshot.run(ZeroShotConfig(run=str(demo_run), shards=str(demo_data / "s-ptbxl"),
                                text=str(demo_text), out=str(tmp_path / "z"),
                                classes=",".join(codes), save_embeddings=True, control=False,
                                bootstrap=0, permutations=0, device="cpu"))
    with h5py.File(tmp_path / "z" / "embeddings.h5", "r") as f:
        emb = f["emb"][...]
        ids = list(shards.read_strings(f[shards.RECORD_ID]))
    text = shards.read_text_matrix(demo_text)
    rows = text.rows(codes)
    names = [text.names[r] for r in rows]
    expected = emb[:6] @ text.emb[rows].T                       # zeroshot's cosines

    out = tmp_path / "scores.csv"
    result = predict.run(PredictConfig(run=str(demo_run),
                                       inputs=tuple(map(str, _raw_paths(demo_data, ids[:6]))),
                                       classes=tuple(names), out=str(out), device="cpu"))
    got = np.asarray([[r[f"cos:{n}"] for n in names] for r in result["rows"]])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    status = dict(zip(result["classes"], result["status"]))
    assert status[names[0]] == "unseen" and status[names[1]] == "seen"   # LVOLT held out
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert [float(r[f"cos:{names[1]}"]) for r in written] == pytest.approx(got[:, 1], abs=1e-6)
    assert out.with_suffix(".classes.csv").exists()


def test_a_new_class_text_gets_a_score_and_bad_records_a_named_row(demo_data, demo_run,
                                                                   tmp_path):
    good = _raw_paths(demo_data, [1])[0]
    truncated = tmp_path / "cut"
    truncated.mkdir()
    for suffix in (".hea", ".dat"):
        data = good.with_suffix(suffix).read_bytes()
        (truncated / good.with_suffix(suffix).name).write_bytes(
            data if suffix == ".hea" else data[:100])
    np.save(tmp_path / "no_rate.npy", np.zeros((12, 1000), np.float32))
    np.savez(tmp_path / "six_leads.npz", signal=np.zeros((6, 1000), np.float32), fs=100)
    (tmp_path / "notes.txt").write_text("not a record")
    sig = np.random.default_rng(0).normal(0, 0.3, (1000, 12)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", signal=sig, fs=100.0)
    inputs = [good, truncated, tmp_path / "no_rate.npy", tmp_path / "six_leads.npz",
              tmp_path / "ok.npz", tmp_path / "missing.hea", tmp_path / "notes.txt"]
    result = predict.run(PredictConfig(
        run=str(demo_run), inputs=tuple(map(str, inputs)), device="cpu", top=2,
        classes=("a heart beating in a tidy row of identical waves",)))
    rows = {r["record"]: r for r in result["rows"]}
    assert result["status"] == ["not in the relation table"]
    assert rows[str(good)]["status"] == rows[str(tmp_path / "ok.npz")]["status"] == "ok"
    assert np.isfinite(rows[str(good)]["cos:a heart beating in a tidy row of identical waves"])
    reasons = {Path(name).name: r["reason"] for name, r in rows.items() if r["status"] != "ok"}
    assert reasons == {"00001_lr.hea": "truncated_signal", "no_rate.npy": "bad_sampling_rate",
                       "six_leads.npz": "missing_lead", "missing.hea": "missing_file",
                       "notes.txt": "unknown_format"}
    assert len(result["rows"]) == len(inputs)           # nothing lost, nothing crashed


def test_the_python_example_in_the_docs_runs(demo_data, demo_run, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert blocks
    record = _raw_paths(demo_data, [3])[0].with_suffix("")
    exec(blocks[0], {"run_dir": str(demo_run), "record_path": str(record)})
    printed = capsys.readouterr().out
    assert "left bundle branch block" in printed and "seen" in printed


def test_classifier_rejects_what_it_cannot_read(demo_run):
    from ecgshard import ZeroShotClassifier

    clf = ZeroShotClassifier.from_run(demo_run, device="cpu")
    with pytest.raises(BadRecordError, match="missing_lead|no V6"):
        clf.encode_ecg([np.zeros((11, 1000), np.float32)], fs=100,
                       leads=list(shards.LEADS[:11]))
    a = clf.encode_text(["sinus rhythm", "atrial fibrillation"])
    b = clf.encode_text(["atrial fibrillation"])              # cached, same row
    np.testing.assert_array_equal(a[1], b[0])
    assert clf.probabilities(a @ a.T) is None                 # clip runs have no calibration


def test_embed_writes_ids_folds_and_labels(demo_data, demo_run, tmp_path):
    out = embed.run(EmbedConfig(run=str(demo_run), shards=str(demo_data / "s-ptbxl"),
                                out=str(tmp_path / "e.h5"), folds=(9, 10), device="cpu"))
    manifest = shards.load_manifest(demo_data / "s-ptbxl")
    with h5py.File(out, "r") as f:
        emb, folds, labels = f["emb"][...], f[shards.FOLD][...], f[shards.LABELS][...]
        codes = list(shards.read_strings(f["codes"]))
        n = len(f[shards.RECORD_ID])
    assert emb.shape[0] == n == len(folds) == len(labels) and set(folds) == {9, 10}
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert codes == shards.class_codes(manifest)
    from ecgshard.data import Selection, count_selection

    assert n == count_selection(Selection(str(demo_data / "s-ptbxl"), (9, 10), ()))[0]


def test_probe_reports_each_fraction_beside_an_untrained_encoder(demo_data, demo_run, tmp_path):
    report = probe.run(ProbeConfig(run=str(demo_run), shards=str(demo_data / "s-ptbxl"),
                                   out=str(tmp_path), fractions=(0.1, 1.0), min_positives=3,
                                   device="cpu"))
    rows = report["fractions"]
    assert [r["fraction"] for r in rows] == [0.1, 1.0]
    assert rows[0]["train_records"] < rows[1]["train_records"]
    full = rows[1]
    assert full["trained"]["n_classes"] >= 5
    # planted morphology: the trained embedding carries it better than an untrained one
    assert full["trained"]["macro_auroc"] > full["untrained"]["macro_auroc"]
    assert (tmp_path / "probe.json").exists()
    assert "10% |" in "\n".join(probe.summary_lines(report))


def test_a_run_whose_text_matrix_lacks_its_recipe_is_refused(demo_run, demo_text, tmp_path):
    import dataclasses
    import shutil

    from ecgshard import ECGShardError, ZeroShotClassifier

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    old = shards.read_text_matrix(demo_text)
    attrs = {k: v for k, v in old.attrs.items()
             if k not in ("load", "schema_version", "content_sha256")}
    shards.write_text_matrix(tmp_path / "old.h5", old.emb, old.codes, old.texts, old.names,
                             attrs)
    info = shards.read_run_info(run)
    shards.write_run_info(run, dataclasses.replace(info, text=str(tmp_path / "old.h5")))
    with pytest.raises(ECGShardError, match="rerun `ecgshard embed-text`"):
        ZeroShotClassifier.from_run(run, device="cpu")


def test_class_status_places_words_by_the_names_they_contain(demo_run):
    from ecgshard import ZeroShotClassifier

    clf = ZeroShotClassifier.from_run(demo_run, device="cpu")
    status = clf.class_status(["Sinus rhythm.", "sinus rhythm with left bundle branch block",
                               "words that name no finding"])
    assert status[0] == "seen via SR"
    assert status[1].startswith("related via")
    assert status[2] == "not in the relation table"
