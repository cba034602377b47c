"""Using a trained run: predict, the Python API, embed and probe."""
import csv
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ecgshard import BadRecordError, concepts, embed, predict, probe, shards, zeroshot
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
    # the API scores by zeroshot's rules too: through the trained finding statements
    from ecgshard import ZeroShotClassifier
    from ecgshard.run import Run
    from ecgshard.scoring import Scorer

    trained = Run.load(demo_run)
    assert trained.finding_codes                     # fit trains them by default
    through = Scorer("findings", trained.text_rows, trained.text_rows, trained.finding_rows)
    clf = ZeroShotClassifier.from_run(demo_run, device="cpu")
    read = clf.scores(emb[:6], names, scoring="findings")
    np.testing.assert_allclose(read, through(emb[:6], text.emb[rows],
                                             sentences=text.sentences(codes)), atol=2e-5)
    assert not np.allclose(read, through(emb[:6], text.emb[rows]))   # read sentence by sentence
    assert not np.allclose(read, got)
    status = dict(zip(result["classes"], result["status"]))
    assert status[names[0]] == "unseen" and status[names[1]] == "seen"   # LVOLT held out
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert [float(r[f"cos:{names[1]}"]) for r in written] == pytest.approx(got[:, 1], abs=1e-6)
    status = list(csv.DictReader(open(out.with_suffix(".classes.csv"))))
    assert [r["class"] for r in status] == names and all(r["why"] for r in status)


def test_a_new_class_text_gets_a_score_and_bad_records_a_named_row(demo_data, demo_run,
                                                                   tmp_path, caplog):
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
    with caplog.at_level(logging.WARNING, logger="ecgshard"):
        result = predict.run(PredictConfig(
            run=str(demo_run), inputs=tuple(map(str, inputs)), device="cpu", top=2,
            classes=("a heart beating in a tidy row of identical waves",)))
    # A user's own words stand for themselves: no warning that they lack a class definition.
    assert "no findings text" not in caplog.text
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
                             attrs, (old.finding_codes, old.finding_texts, old.finding_emb),
                             (old.sentence_rows, old.sentence_emb))
    info = shards.read_run_info(run)
    (run / shards.RUN_TEXT).unlink()                # a run from before runs kept a copy
    shards.write_run_info(run, dataclasses.replace(info, text=str(tmp_path / "old.h5")))
    with pytest.raises(ECGShardError, match="rerun `ecgshard embed-text`"):
        ZeroShotClassifier.from_run(run, device="cpu")


def test_class_status_places_words_by_the_names_they_contain(demo_run):
    from ecgshard import ZeroShotClassifier

    clf = ZeroShotClassifier.from_run(demo_run, device="cpu")
    words = ["Sinus rhythm.", "sinus rhythm with left bundle branch block",
             "words that name no finding", "NORM"]
    status = clf.class_status(words)
    assert list(status.index) == words and status.index.name == "class"
    assert list(status["label"]) == ["seen via SR", status["label"].iloc[1],
                                     "not in the relation table", "seen"]
    assert status.loc["sinus rhythm with left bundle branch block", "status"] == "related"
    assert status.loc["Sinus rhythm.", "code"] == "426783006"        # by its SNOMED name
    assert pd.isna(status.loc["words that name no finding", "code"])
    assert status.loc["NORM", "code"] == "NORM"
    assert status.loc["NORM", "why"] == "trained itself"


def _rewritten(path, attrs_update=None):
    """Rewrite a text matrix in place as another template would: other rows, other attrs."""
    old = shards.read_text_matrix(path)
    attrs = {k: v for k, v in old.attrs.items() if k not in ("schema_version", "content_sha256")}
    attrs.update(attrs_update or {"templates": ["an ECG showing {name}"]})
    emb = np.roll(old.emb, 1, axis=1)
    shards.write_text_matrix(path, emb / np.linalg.norm(emb, axis=1, keepdims=True), old.codes,
                             old.texts, old.names, attrs)


def test_a_rewritten_text_matrix_is_refused_naming_both_hashes(demo_run, tmp_path):
    """R1: predict and the API score with the run's own text side, checked against run.json."""
    import dataclasses
    import shutil

    from ecgshard import ECGShardError, ZeroShotClassifier

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    info = shards.read_run_info(run)
    assert shards.read_text_matrix(run / shards.RUN_TEXT).sha256 == info.text_sha256
    _rewritten(run / shards.RUN_TEXT)
    with pytest.raises(ECGShardError, match=rf"not the text matrix .* {info.text_sha256[:12]} in "
                                            rf"run.json"):
        ZeroShotClassifier.from_run(run, device="cpu")
    # a run from before the copy: the recorded path is checked the same way
    (run / shards.RUN_TEXT).unlink()
    shutil.copyfile(info.text, tmp_path / "t.h5")
    shards.write_run_info(run, dataclasses.replace(info, text=str(tmp_path / "t.h5")))
    ZeroShotClassifier.from_run(run, device="cpu")
    _rewritten(tmp_path / "t.h5")
    with pytest.raises(ECGShardError, match="rewritten since"):
        predict.run(PredictConfig(run=str(run), inputs=(str(tmp_path),), classes=("x",),
                                  device="cpu"))


def test_a_run_scores_with_its_own_class_texts_from_any_directory(demo_data, monkeypatch,
                                                                   tmp_path):
    """R1: a relative --class-texts path, deleted or edited after training, changes nothing;
    a class texts file edited between embed-text and fit is refused."""
    import dataclasses
    import json

    from ecgshard import ECGShardError, ZeroShotClassifier, fit, text

    table = json.loads(concepts.class_texts_bytes())
    table["classes"]["CLBBB"]["findings"] = ["wide notched R waves in I and V6"]
    monkeypatch.chdir(tmp_path)
    Path("ct.json").write_text(json.dumps(table))
    text.run(text.TextConfig(vocab=(str(demo_data / "s-ptbxl"),), out="t.h5", device="cpu",
                             model="minilm-offline", class_texts="ct.json"))
    cfg = fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text="t.h5", out="run",
                        holdout=("LVOLT",), epochs=1, max_steps=1, batch_size=64,
                        device="cpu", min_positives=3)
    fit.run(cfg)
    matrix = shards.read_text_matrix("t.h5")
    row = matrix.emb[matrix.rows(["CLBBB"])[0]]
    Path("ct.json").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    clf = ZeroShotClassifier.from_run(tmp_path / "run", device="cpu")
    got = clf.encode_text([matrix.names[matrix.rows(["CLBBB"])[0]]])[0]
    np.testing.assert_allclose(got, row, atol=1e-5)          # the edited findings, not the package's
    monkeypatch.chdir(tmp_path)
    table["classes"]["CLBBB"]["findings"] = ["something else"]
    Path("ct.json").write_text(json.dumps(table))
    with pytest.raises(ECGShardError, match="changed since t.h5 was embedded"):
        fit.run(dataclasses.replace(cfg, out="run2"))
    (tmp_path / "run" / shards.RUN_CLASS_TEXTS).write_text(json.dumps(table))
    with pytest.raises(ECGShardError, match="differ from those .* trained with"):
        ZeroShotClassifier.from_run(tmp_path / "run", device="cpu")


def test_every_unreadable_numpy_record_is_a_named_row_and_the_csv_is_written(demo_run,
                                                                             tmp_path):
    """R3, R2: one bad file never aborts the batch; implausible units or rates are named."""
    from ecgshard import ECGShardError

    sig = np.random.default_rng(0).normal(0, 0.3, (12, 1000)).astype(np.float32)
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    np.savez(tmp_path / "fs_array.npz", signal=sig, fs=np.array([100.0, 500.0]))
    np.savez(tmp_path / "microvolts.npz", signal=sig * 1000, fs=100)
    np.savez(tmp_path / "volts.npz", signal=sig / 1000, fs=100)
    np.savez(tmp_path / "half_hz.npz", signal=sig, fs=0.5)
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "ok.npz", signal=sig, fs=100)
    out = tmp_path / "scores.csv"
    result = predict.run(PredictConfig(run=str(demo_run), inputs=(str(tmp_path),),
                                       classes=("atrial fibrillation",), out=str(out),
                                       device="cpu"))
    reasons = {Path(r["record"]).name: r["reason"] for r in result["rows"]}
    assert reasons == {"zip.npz": "unreadable_signal", "fs_array.npz": "bad_sampling_rate",
                       "microvolts.npz": "implausible_amplitude",
                       "volts.npz": "implausible_amplitude", "half_hz.npz": "bad_sampling_rate",
                       "object.npy": "unreadable_signal", "ok.npz": ""}
    with open(out) as f:
        assert len(list(csv.DictReader(f))) == 7
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ECGShardError, match="no record files"):
        predict.run(PredictConfig(run=str(demo_run), inputs=(str(empty),), classes=("x",),
                                  device="cpu"))


def test_classifier_arguments_are_checked_not_iterated(demo_run):
    """R4: strings where lists belong, unknown leads and transposed records."""
    from ecgshard import ECGShardError, ZeroShotClassifier

    clf = ZeroShotClassifier.from_run(demo_run, device="cpu")
    sig = np.random.default_rng(1).normal(0, 0.3, (12, 1000)).astype(np.float32)
    with pytest.raises(ECGShardError, match=r"write \['atrial fibrillation'\]"):
        clf.predict([sig], fs=100, classes="atrial fibrillation")
    for bad in ("V1", ["X"]):
        with pytest.raises(ECGShardError, match="lead"):
            clf.encode_ecg([sig], fs=100, keep_leads=bad)
    lower = clf.encode_ecg([sig], fs=100, keep_leads=["i", "v1"])
    np.testing.assert_array_equal(lower, clf.encode_ecg([sig], fs=100, keep_leads=["I", "V1"]))
    assert not np.allclose(lower, clf.encode_ecg([sig], fs=100))
    np.testing.assert_allclose(clf.encode_ecg([sig.T], fs=100), clf.encode_ecg([sig], fs=100),
                               atol=1e-6)                     # (T, 12) is read as (12, T)
    with pytest.raises(ECGShardError, match="one record: \\[signal\\]"):
        clf.encode_ecg(sig.T, fs=100)
    with pytest.raises(BadRecordError, match="13 lead names"):
        clf.encode_ecg([sig], fs=100, leads=list(shards.LEADS) + ["V7"])


def test_probe_refuses_folds_that_would_leak(demo_data, demo_run, tmp_path):
    """R14: the probe is never scored on records it, or the run's encoder, was fitted on."""
    from ecgshard import ECGShardError

    common = dict(run=str(demo_run), shards=str(demo_data / "s-ptbxl"), device="cpu",
                  fractions=(1.0,), min_positives=3)
    with pytest.raises(ECGShardError, match="overlap"):
        probe.run(ProbeConfig(train_folds=tuple(range(1, 11)), test_folds=(10,), **common))
    with pytest.raises(ECGShardError, match=r"folds \[8\] are folds the run trained"):
        probe.run(ProbeConfig(train_folds=(1, 2), test_folds=(8,), **common))
    with pytest.raises(ECGShardError, match=r"no records in the probe's test folds \[11\]"):
        probe.run(ProbeConfig(test_folds=(11,), **common))


def test_a_calibrated_loss_gives_probabilities_from_its_scale_and_bias(demo_run, tmp_path):
    """The sigmoid loss trained scale and bias for probabilities; the loss class says so, not
    its name."""
    import shutil

    import torch

    from ecgshard import ZeroShotClassifier

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    ck = shards.load_checkpoint(run / "checkpoint-best.pt")
    shards.save_checkpoint(run / "checkpoint-best.pt", dict(ck, loss_name="bce"))
    clf = ZeroShotClassifier.from_run(run, device="cpu")
    cos = np.array([[-0.5, 0.0, 0.7]])
    scale, bias = clf.model.scale().item(), clf.model.logit_bias.item()
    np.testing.assert_allclose(clf.probabilities(cos),
                               torch.sigmoid(torch.tensor(scale * cos + bias)).numpy(), atol=1e-6)
    assert clf.run.loss.calibrated


def test_records_in_other_units_than_the_training_input_are_warned_of(demo_run, caplog):
    """The run records its training input's typical lead SD; records ten times larger (µV/100,
    a z-scored model's input given millivolts...) score all alike, so scoring them warns,
    naming both amplitudes, and records like the training input do not."""
    from ecgshard import ZeroShotClassifier, synth

    assert shards.read_run_info(demo_run).input_lead_sd > 0
    rng = np.random.default_rng(0)
    records = [synth.synth_signal(("SR",), 100, 10, rng) for _ in range(4)]
    clf = ZeroShotClassifier.from_run(demo_run, device="cpu")
    with caplog.at_level(logging.WARNING, logger="ecgshard.signal"):
        clf.encode_ecg(records, fs=100)
    assert "typical lead SD" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="ecgshard.signal"):
        clf.encode_ecg([10 * r for r in records], fs=100)
    assert "typical lead SD" in caplog.text and "the run's training input" in caplog.text


def test_an_exported_model_scores_as_its_run_and_refuses_edits(demo_run, tmp_path,
                                                               monkeypatch):
    import json

    from ecgshard import ZeroShotClassifier, export
    from ecgshard.config import ExportConfig
    from ecgshard.errors import ECGShardError

    out = export.run(ExportConfig(run=str(demo_run), out=str(tmp_path / "model")))
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "run.json",
                                               "text.h5", "class_texts.json", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == export.FORMAT and set(config["sha256"]) == {
        "model.safetensors", "run.json", "text.h5", "class_texts.json"}
    card = (out / "README.md").read_text()
    info = shards.read_run_info(demo_run)
    assert f"Held out (never trained, records carrying them excluded): {', '.join(info.holdout)}" \
        in card and f"test {info.folds['test']}" in card

    signals = np.random.default_rng(0).normal(0, 0.3, (3, 12, 1000)).astype(np.float32)
    classes = ["atrial fibrillation", "NORM", "a QRS wider than 120 ms"]
    ids = ["a", "b", "c"]
    run = ZeroShotClassifier.from_run(demo_run, device="cpu").predict(signals, 100, classes)
    model = ZeroShotClassifier.from_pretrained(out, device="cpu")
    exported = model.predict(signals, 100, classes, ids=ids)
    assert list(exported.index) == ids and exported.index.name == "record"
    np.testing.assert_allclose(exported.to_numpy(), run.to_numpy(), atol=1e-6)
    assert list(model.class_status(["NORM"])["status"]) == ["seen"]

    # an exported model is a run to every command that takes one
    assert shards.read_run_info(out).holdout == info.holdout
    from ecgshard.run import Run

    zeroshot_run = Run.load(out)
    assert zeroshot_run.holdout == info.holdout and zeroshot_run.ck["validation"]["emb"].ndim == 2

    elsewhere = tmp_path / "other-report"
    elsewhere.mkdir()
    (elsewhere / "report.json").write_text(json.dumps({"provenance": {
        "run": str(tmp_path / "another-run"), "shards": "s", "folds": [10]}, "groups": {}}))
    with pytest.raises(ECGShardError, match="quotes only its own model's figures"):
        export.run(ExportConfig(run=str(demo_run), out=str(tmp_path / "m2"),
                                reports=(str(elsewhere),)))
    with pytest.raises(ECGShardError, match="3 ids for 2 records"):
        model.predict(signals[:2], 100, classes, ids=ids)
    raw = bytearray((out / "text.h5").read_bytes())
    raw[-1] ^= 1
    (out / "text.h5").write_bytes(bytes(raw))
    with pytest.raises(ECGShardError, match="text.h5 is not the file exported"):
        ZeroShotClassifier.from_pretrained(out, device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ECGShardError, match="cannot fetch nobody/no-such-model"):
        ZeroShotClassifier.from_pretrained("nobody/no-such-model", device="cpu")
    with pytest.raises(ECGShardError, match="neither a directory"):
        ZeroShotClassifier.from_pretrained(str(tmp_path / "absent"), device="cpu")
