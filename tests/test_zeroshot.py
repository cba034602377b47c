import csv
import json

import pytest
from click.testing import CliRunner

from ecgshard import zeroshot
from ecgshard.config import fold_ranges
from ecgshard.cli import main
from ecgshard.errors import ECGShardError


def _zs(demo_data, demo_run, demo_text, out, **kw):
    kw.setdefault("bootstrap", 50)
    kw.setdefault("min_positives", 3)
    kw.setdefault("control_seeds", 3)
    kw.setdefault("permutations", 200)
    return zeroshot.run(zeroshot.ZeroShotConfig(run=str(demo_run), text=str(demo_text),
                                                out=str(out), device="cpu", **kw))


def _summary_blocks(report):
    """The groups the terminal summary gives a macro block, in order."""
    from ecgshard import report as present

    return [line.split(":")[0].strip() for line in present.summary_lines(report)
            if "classes  macro AUROC" in line]


def test_heldout_classes_on_the_test_fold(demo_data, demo_run, demo_text, tmp_path):
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "a",
                 shards=str(demo_data / "s-ptbxl"))
    p = report["provenance"]
    assert p["folds"] == [10] and p["same_shard_set_as_training"] and p["strict_zero_shot"]
    assert "all-MiniLM-L6-v2" in p["text_model"] and "validation folds [9]" in p["threshold_rule"]
    assert [c["code"] for c in report["classes"]] == ["LVOLT"]
    assert report["classes"][0]["group"] == "unseen"
    # every class is unseen: the terminal shows that block once, not again as "all"
    assert _summary_blocks(report) == ["unseen"]
    unseen = report["groups"]["unseen"]
    assert unseen["macro_auroc_ci"][0] <= unseen["macro_auroc"] <= unseen["macro_auroc_ci"][1]
    assert report["references"]["trained_classes_same_folds"]["macro_auroc"] > 0.7
    assert p["bootstrap_unit"] == "patient" and p["n_patients"] < p["n_records"]
    # the random-encoder control is a distribution over seeds, and the model is placed in it
    control = unseen["control"]
    assert len(control["values"]) == 3 and len(set(control["values"])) == 3
    assert control["min"] <= control["mean"] <= control["max"]
    assert 0 < unseen["permutation"]["p"] <= 1 and abs(unseen["permutation"]["mean"] - 0.5) < 0.1
    assert unseen["distinguishable_from_nulls"] == (
        unseen["macro_auroc"] > control["max"] and unseen["permutation"]["p"] < 0.05)
    assert report["classes"][0]["control_auroc"]["min"] <= report["classes"][0]["control_auroc"][
        "max"]
    rows = list(csv.DictReader(open(tmp_path / "a" / "per_class.csv")))
    assert rows[0]["code"] == "LVOLT" and float(rows[0]["auroc"]) == pytest.approx(
        report["classes"][0]["auroc"], abs=1e-5)
    assert (tmp_path / "a" / "roc_pr.png").stat().st_size > 1000
    assert (tmp_path / "a" / "auroc_per_class.png").stat().st_size > 1000


def test_experiment_b_groups_classes_by_concept(demo_data, demo_run, demo_text, tmp_path):
    """'myocardial infarction' was once counted unseen; its children (IMI) were trained, so it
    is related. 'low QRS voltages' is LVOLT's concept, which this run held out: unseen."""
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "b",
                 shards=str(demo_data / "s-cinc"), save_embeddings=True)
    by_code = {c["code"]: c for c in report["classes"]}
    mi = by_code["164865005"]
    assert (mi["group"], mi["via"]) == ("related", "IMI") and "child IMI" in mi["why"]
    assert mi["n_pos"] > 5 and mi["auroc"] > 0.75
    assert (by_code["164861001"]["group"], by_code["164861001"]["via"]) == ("seen", "ISC_")
    assert by_code["164909002"]["group"] == "seen" and by_code["164909002"]["via"] == "CLBBB"
    assert by_code["251146004"]["group"] == "unseen"       # LVOLT's concept was held out
    # bradycardia: SBRAD was trained (related), and so was "heart rate below 50", which
    # restates it: seen through the statement
    brady = by_code["426627000"]
    assert brady["group"] == "seen" and brady["via"].startswith("finding:rate_")
    assert "restates 426627000" in brady["why"]
    assert set(report["groups"]) == {"all", "seen", "related", "unseen"}
    assert _summary_blocks(report) == ["seen", "related", "unseen", "all"]
    assert report["groups"]["unseen"]["classes"] == ["251146004"]
    assert report["groups"]["seen"]["macro_auroc"] > 0.7
    # however well trained classes score, their figure and one pooled with them is no zero-shot
    # claim
    for name in ("seen", "all"):
        assert report["groups"][name]["zero_shot_claim"] is False
        assert report["groups"][name]["verdict"].endswith(
            "; not a zero-shot figure: it has seen or related classes")
    # the Challenge's PTB-XL records are the training database itself: not scored
    assert set(report["per_source"]) == {"CPSC2018", "Georgia", "INCART", "Ningbo", "PTB"}
    assert report["provenance"]["excluded_sources_same_as_training"] == {"PTB-XL": 40}
    assert report["provenance"]["folds"] == list(range(1, 11))
    assert (tmp_path / "b" / "embeddings.h5").exists()
    # each class names the sources carrying it and is scored among their records too
    for c in report["classes"]:
        if c["auroc"] is not None:
            assert c["positive_sources"]
            assert set(c["positive_sources"]) <= set(report["per_source"])
            assert c["single_source"] == (len(c["positive_sources"]) == 1)
            assert c["within_source_auroc"] is not None
    assert report["groups"]["seen"]["within_source_macro_auroc"] is not None


def test_same_records_built_differently_are_the_same_dataset(demo_data, demo_run, demo_text,
                                                            tmp_path):
    """Shards of the training records built with other parameters must still be evaluated on
    the run's test folds only, never on the folds it trained on."""
    from ecgshard import build

    other = tmp_path / "zscore"
    build.run(build.BuildConfig(source_dir=str(demo_data / "ptbxl"), out_dir=str(other),
                                normalize="zscore", workers=1))
    with pytest.raises(ECGShardError, match="normalize: 'mv' vs 'zscore'.*"
                                            "--allow-signal-mismatch"):
        _zs(demo_data, demo_run, demo_text, tmp_path / "z", shards=str(other))
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "z", shards=str(other),
                 bootstrap=0, control=False, allow_signal_mismatch=True)
    assert report["provenance"]["same_shard_set_as_training"]
    assert report["provenance"]["folds"] == [10]


def test_class_without_positives_is_listed_not_averaged(demo_data, demo_run, demo_text,
                                                        tmp_path):
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "c",
                 shards=str(demo_data / "s-ptbxl"), classes="LVOLT,NORM", folds=(10,),
                 bootstrap=0, control=False)
    assert report["not_evaluable"] == []
    # a class without positives in the scored folds is listed, not averaged; one with
    # positives is: both kinds are picked from the shards, so the test always checks both
    from ecgshard import data, shards

    cinc = demo_data / "s-cinc"
    codes = shards.class_codes(shards.load_manifest(cinc))
    positives = data.load_selection(data.Selection(str(cinc), (3,), tuple(codes)))["labels"].sum(0)
    absent = next(c for c, n in zip(codes, positives) if n == 0)
    present = [c for c, n in zip(codes, positives) if 3 <= n < positives.sum()][:2]
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "d", shards=str(cinc),
                 classes=",".join([absent] + present), folds=(3,), bootstrap=0, control=False,
                 min_positives=3)
    by_code = {c["code"]: c for c in report["classes"]}
    assert by_code[absent]["auroc"] is None and report["not_evaluable"] == [absent]
    evaluable = [by_code[c]["auroc"] for c in present if by_code[c]["in_macro"]]
    assert evaluable
    assert report["groups"]["all"]["macro_auroc"] == pytest.approx(
        sum(evaluable) / len(evaluable), abs=1e-6)


def test_classes_with_few_positives_are_listed_not_averaged(demo_data, demo_run, demo_text,
                                                             tmp_path):
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "few",
                 shards=str(demo_data / "s-cinc"), classes="all", bootstrap=20,
                 min_positives=12, control=False, permutations=0)
    for name, group in report["groups"].items():
        members = [c for c in report["classes"] if name == "all" or c["group"] == name]
        few = {c["code"]: c["n_pos"] for c in members
               if c["auroc"] is not None and c["n_pos"] < 12}
        assert group["excluded_few_positives"] == few
        assert set(group["classes"]) == {c["code"] for c in members
                                         if c["auroc"] is not None and c["n_pos"] >= 12}


def test_youden_threshold_is_labelled_optimistic(demo_data, demo_run, demo_text, tmp_path):
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "e",
                 shards=str(demo_data / "s-ptbxl"), threshold="youden", bootstrap=0)
    assert report["provenance"]["threshold_rule"].startswith("OPTIMISTIC")


def test_text_of_another_model_is_refused(demo_data, demo_run, tmp_path):
    from ecgshard import shards

    m = shards.read_text_matrix(demo_data / "text.h5")
    attrs = {k: v for k, v in m.attrs.items() if k not in ("schema_version", "content_sha256")}
    shards.write_text_matrix(tmp_path / "other.h5", m.emb, m.codes, m.texts, m.names,
                             dict(attrs, model_id="some/other-model"))
    with pytest.raises(ECGShardError, match="do not share a space"):
        _zs(demo_data, demo_run, tmp_path / "other.h5", tmp_path / "f",
            shards=str(demo_data / "s-ptbxl"))


def test_cli_end_to_end(tmp_path):
    r = CliRunner()

    def ok(*args):
        result = r.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    ok("synth", tmp_path / "raw", "--format", "ptbxl", "-n", "160")
    ok("build", tmp_path / "raw", "--format", "ptbxl", "--out", tmp_path / "shards",
       "--workers", "1")
    assert "records in" in ok("inspect", tmp_path / "shards")
    ok("embed-text", "--vocab", tmp_path / "shards", "--model", "minilm-offline", "--out",
       tmp_path / "text.h5")
    assert "most similar" in ok("text-sim", tmp_path / "text.h5", "--top", "3")
    ok("fit", "--shards", tmp_path / "shards", "--text", tmp_path / "text.h5", "--out",
       tmp_path / "run", "--holdout", "SBRAD", "--epochs", "1", "--max-steps", "2",
       "--device", "cpu", "--min-positives", "2", "--batch-size", "16", "--data", "stream",
       "--workers", "0")
    # without --text: the run's own copy of the matrix it trained against
    out = ok("zeroshot", "--run", tmp_path / "run", "--shards", tmp_path / "shards",
             "--out", tmp_path / "report", "--bootstrap", "10")
    assert "unseen" in out and "macro AUROC" in out
    assert "scoring: findings-unseen, classes read through the statements sentence by " \
           "sentence" in out
    table = ok("report", tmp_path / "report")
    assert "unseen macro_auroc" in table
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["provenance"]["holdout"] == ["SBRAD"]
    assert report["provenance"]["text"] == str((tmp_path / "run" / "text.h5").resolve())


def test_val_z_threshold_gives_each_class_its_own_scale(demo_data, demo_run, demo_text,
                                                        tmp_path):
    report = _zs(demo_data, demo_run, demo_text, tmp_path / "vz", shards=str(demo_data / "s-cinc"),
                 threshold="val-z", bootstrap=0, control=False)
    thresholds = {c["threshold"] for c in report["classes"]}
    assert len(thresholds) > 1
    assert "no evaluated labels used" in report["provenance"]["threshold_rule"]
    seen = report["groups"]["seen"]
    assert seen["macro_sensitivity"] is not None and 0 <= seen["macro_f1"] <= 1


def test_report_table_folds_compact():
    from ecgshard import report

    assert fold_ranges([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert fold_ranges([10]) == "10"
    assert report.num(0.12345) == "0.123" and report.num(None) == "n/a"
    assert report.num(float("nan"), missing="-") == "-" and report.num(7) == "7"


def test_scoring_pools_only_the_valid_samples_as_training_did(demo_data, demo_run, demo_text,
                                                              tmp_path):
    """Challenge records shorter than 10 s are zero-padded in the shards; zeroshot must embed
    them with their stored lengths, as fit trained (a padded mean is another feature)."""
    import h5py
    import numpy as np

    from ecgshard import data, shards
    from ecgshard.models import ZeroShotModel

    _zs(demo_data, demo_run, demo_text, tmp_path / "len", shards=str(demo_data / "s-cinc"),
        classes="all", bootstrap=0, control=False, permutations=0, save_embeddings=True)
    with h5py.File(tmp_path / "len" / "embeddings.h5", "r") as f:
        saved, ids = f["emb"][...], shards.read_strings(f[shards.RECORD_ID])
    sel = data.Selection(str(demo_data / "s-cinc"), tuple(range(1, 11)), ())
    loaded = data.load_selection(sel, with_ids=True)
    keep = ~np.isin(loaded["source"], ["PTB-XL"])
    assert list(loaded["record_id"][keep]) == list(ids)
    short = loaded["length"][keep] < loaded["signal"].shape[-1]
    assert short.any()
    encoder = ZeroShotModel.from_checkpoint(
        shards.load_checkpoint(demo_run / "checkpoint-best.pt")).encoder
    with_length = encoder.encode(loaded["signal"][keep], loaded["length"][keep])
    np.testing.assert_allclose(saved, with_length, atol=1e-5)
    without = encoder.encode(loaded["signal"][keep])
    assert not np.allclose(saved[short], without[short], atol=1e-3)


def test_scoring_needs_the_run_not_its_training_shards(demo_data, demo_text, tmp_path):
    """The run record and the checkpoint carry what zeroshot needs (validation embeddings for
    the thresholds, the signal path): the training shards may be gone."""
    import shutil

    from ecgshard import fit, shards

    train_copy, eval_copy = tmp_path / "train-shards", tmp_path / "eval-shards"
    shutil.copytree(demo_data / "s-ptbxl", train_copy)
    shutil.copytree(demo_data / "s-ptbxl", eval_copy)
    fit.run(fit.FitConfig(shards=str(train_copy), text=str(demo_text), out=str(tmp_path / "run"),
                          holdout=("LVOLT",), epochs=1, max_steps=3, batch_size=64,
                          device="cpu", min_positives=3))
    ck = shards.load_checkpoint(tmp_path / "run" / "checkpoint-best.pt")
    info = shards.read_run_info(tmp_path / "run")
    assert ck["validation"]["emb"].shape[0] == info.records["val"]
    shutil.rmtree(train_copy)
    for rule in ("val-seen", "val-z"):
        report = zeroshot.run(zeroshot.ZeroShotConfig(
            run=str(tmp_path / "run"), shards=str(eval_copy), text=str(demo_text),
            out=str(tmp_path / rule), threshold=rule, bootstrap=0, control=False,
            permutations=0, min_positives=3, device="cpu"))
        assert report["provenance"]["same_shard_set_as_training"]
        assert "validation folds [9]" in report["provenance"]["threshold_rule"]


def test_no_abnormality_baseline_from_a_normal_text_the_run_never_trained(demo_data, demo_text,
                                                                          tmp_path, caplog):
    """A run trained on no normal concept (here: form statements only, NORM and sinus rhythm
    left out) learned no direction for "normal": minus the cosine to NORM's text would score
    an arbitrary axis and a margin over it would mean nothing, so the baseline is the mean
    over the wrong-text candidates alone."""
    from ecgshard import concepts, controls, fit
    from ecgshard import report as present

    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                          out=str(tmp_path / "run"), holdout=("LVOLT",), epochs=1, max_steps=3,
                          batch_size=64, device="cpu", min_positives=3, train_kinds=("form",)))
    with caplog.at_level("WARNING"):
        report = zeroshot.run(zeroshot.ZeroShotConfig(
            run=str(tmp_path / "run"), shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
            out=str(tmp_path / "z"),
            bootstrap=20, control=False, permutations=0, min_positives=3, device="cpu"))
    assert "trained no normal text" in caplog.text
    assert report["provenance"]["normal_text"] is None
    assert report["provenance"]["abnormality_baselines"] == ["mean_over_texts"]
    base = report["groups"]["unseen"]["abnormality_baseline"]
    assert set(base["candidates_macro_auroc"]) == {"mean_over_texts"}
    assert all(c["abnormality_score"] == "mean_over_texts" for c in report["classes"])
    assert present._baseline_text(report["provenance"]) == \
        "the mean score over the wrong-text candidates"
    assert present._baseline_text({"normal_text": None}).startswith("none here")
    graph = concepts.load()
    assert controls.normal_text_code(["NORM", "PVC"], graph, trained=["PVC", "INVT"]) is None
    assert controls.normal_text_code(["NORM", "426783006"], graph, trained=["SR"]) == "426783006"


def test_fewer_leads_are_scored_with_the_others_zeroed(demo_data, demo_run, demo_text, tmp_path):
    import h5py
    import numpy as np

    from ecgshard import data, shards
    from ecgshard.models import ZeroShotModel

    common = dict(shards=str(demo_data / "s-ptbxl"), classes="all", bootstrap=0, control=False,
                  permutations=0)
    full = _zs(demo_data, demo_run, demo_text, tmp_path / "12", **common)
    one = _zs(demo_data, demo_run, demo_text, tmp_path / "1", leads=("I",), save_embeddings=True,
              **common)
    assert full["provenance"]["leads"] == list(shards.LEADS)
    assert one["provenance"]["leads"] == ["I"]
    sel = data.Selection(str(demo_data / "s-ptbxl"), (10,), ())
    loaded = data.load_selection(sel, with_ids=True)
    lead_i = loaded["signal"].copy()
    lead_i[:, 1:] = 0
    encoder = ZeroShotModel.from_checkpoint(
        shards.load_checkpoint(demo_run / "checkpoint-best.pt")).encoder
    with h5py.File(tmp_path / "1" / "embeddings.h5", "r") as f:
        np.testing.assert_allclose(f["emb"][...], encoder.encode(lead_i, loaded["length"]),
                                   atol=1e-5)
    aurocs = [r["groups"]["all"]["macro_auroc"] for r in (full, one)]
    assert aurocs[0] != aurocs[1]
    with pytest.raises(ECGShardError, match="--leads takes distinct names"):
        zeroshot.ZeroShotConfig(run="r", shards="s", text="t", out="o", leads=("avl",))


def test_plots_draw_an_interval_that_excludes_its_point_estimate(tmp_path):
    """A percentile bootstrap interval can lie beside its point estimate (skewed resampling
    with few positives); the plot draws it as it is instead of failing."""
    import numpy as np

    from ecgshard import report

    rng = np.random.default_rng(0)
    labels = (rng.random((40, 2)) < 0.3).astype(np.uint8)
    scores = rng.random((40, 2))
    classes = [{"code": "A", "name": "a", "group": "unseen", "auroc": 0.90,
                "auroc_ci": [0.92, 0.97]},
               {"code": "B", "name": "b", "group": "seen", "auroc": 0.60, "auroc_ci": None}]
    report.write_plots(tmp_path, scores, labels, ["A", "B"], classes)
    assert (tmp_path / "auroc_per_class.png").stat().st_size > 0


def test_classes_without_text_are_listed_and_none_is_an_error(demo_data, demo_run, demo_text,
                                                              tmp_path):
    """R13: a text matrix that lacks some of the set's classes never shrinks a report
    silently; one that lacks all of them is an error, not a 0-class report."""
    from ecgshard import shards

    m = shards.read_text_matrix(demo_text)
    attrs = {k: v for k, v in m.attrs.items() if k not in ("schema_version", "content_sha256")}
    vocab = shards.class_codes(shards.load_manifest(demo_data / "s-ptbxl"))
    drop = {"LVOLT", "CLBBB"}
    keep = [i for i, c in enumerate(m.codes) if c in set(vocab) - drop]
    shards.write_text_matrix(tmp_path / "part.h5", m.emb[keep], [m.codes[i] for i in keep],
                             [m.texts[i] for i in keep], [m.names[i] for i in keep], attrs)
    report = _zs(demo_data, demo_run, tmp_path / "part.h5", tmp_path / "a", classes="all",
                 shards=str(demo_data / "s-ptbxl"), bootstrap=0, control=False,
                 permutations=0)
    assert sorted(report["provenance"]["classes_without_text"]) == sorted(drop)
    assert not drop & {c["code"] for c in report["classes"]}
    with pytest.raises(ECGShardError, match="no embedding for any of the"):
        _zs(demo_data, demo_run, tmp_path / "part.h5", tmp_path / "b", classes="all",
            shards=str(demo_data / "s-cinc"), bootstrap=0, control=False, permutations=0,
            allow_signal_mismatch=True)


@pytest.mark.parametrize("rule", ["fixed:nan", "fixed:inf", "fixed:2"])
def test_a_threshold_that_is_no_cosine_is_refused(rule):
    with pytest.raises(ECGShardError, match="a cosine in"):
        zeroshot.ZeroShotConfig(run="r", shards="s", text="t", out="o", threshold=rule)


def test_a_report_directory_is_locked_and_replaced_as_a_whole(demo_data, demo_run, demo_text,
                                                              tmp_path, monkeypatch):
    """R5: no report beside another run's plots, no stale embeddings, no half-written set,
    and never another directory's files deleted."""
    import json

    from ecgshard import report as present
    from ecgshard import shards

    out = tmp_path / "z"
    quick = dict(shards=str(demo_data / "s-ptbxl"), bootstrap=0, control=False, permutations=0)
    _zs(demo_data, demo_run, demo_text, out, save_embeddings=True, **quick)
    assert (out / "embeddings.h5").exists()
    first = (out / "report.json").read_text()

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(present, "write_plots", killed)
    with pytest.raises(KeyboardInterrupt):
        _zs(demo_data, demo_run, demo_text, out, classes="all", **quick)
    assert (out / "report.json").read_text() == first           # the old set, whole
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    monkeypatch.undo()
    _zs(demo_data, demo_run, demo_text, out, classes="all", **quick)
    assert not (out / "embeddings.h5").exists()                 # not this run's: gone
    assert json.loads((out / "report.json").read_text())["provenance"]["config"]["classes"] == "all"

    with shards.exclusive_lock(out, "zeroshot", beside=True):
        with pytest.raises(ECGShardError, match="in use by pid .* \\(zeroshot\\)"):
            _zs(demo_data, demo_run, demo_text, out, **quick)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(ECGShardError, match="holds files but no report.json"):
        _zs(demo_data, demo_run, demo_text, other, **quick)
    assert (other / "mine.txt").read_text() == "keep me"


def test_scorers_remove_the_shared_direction_and_the_record_offset():
    """A world where every class text shares one direction and every abnormal record leans
    on it: by cosine a wrong abnormal text scores class A about as well as A's own text;
    centred on the training rows, A's own text separates A's records and the wrong one does
    not; record-z centres each record's scores over the candidate texts, keeping its order."""
    import numpy as np

    from ecgshard.zeroshot import Scorer

    rng = np.random.default_rng(0)
    d = 32
    shared, own_a, own_b = np.eye(d)[0], np.eye(d)[1], np.eye(d)[2]
    train = np.stack([shared * 0.9 + np.eye(d)[k] * 0.4 for k in range(3, 9)])
    text_a = shared * 0.9 + own_a * 0.4
    text_b = shared * 0.9 + own_b * 0.4
    rows = np.stack([text_a, text_b]) / np.linalg.norm([text_a, text_b], axis=1)[:, None]
    n = 400
    is_a = rng.random(n) < 0.5
    abnormal = is_a | (rng.random(n) < 0.5)
    emb = rng.normal(0, 0.3, (n, d)) + np.outer(abnormal, shared) * 2.0 + np.outer(is_a, own_a) * 0.5
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def auroc(score):
        from sklearn.metrics import roc_auc_score

        return roc_auc_score(is_a, score)

    cosine = Scorer("cosine", train, rows)(emb, rows)
    centered = Scorer("centered", train, rows)(emb, rows)
    assert auroc(cosine[:, 1]) > 0.7                      # the wrong text rides the shared axis
    assert auroc(centered[:, 0]) > 0.8 and abs(auroc(centered[:, 1]) - 0.5) < 0.1
    z = Scorer("record-z", train, rows)
    np.testing.assert_allclose(z(emb, rows).mean(1), 0, atol=1e-5)   # rows are the candidates
    assert np.all(np.argsort(z(emb, rows), 1) == np.argsort(cosine, 1))  # a record's order kept


def test_scoring_through_findings_reads_a_class_text_in_the_trained_statements():
    """A class whose text is nearest one trained finding statement is scored also through
    that statement's row: records the encoder placed on the statement score high even where
    the class text itself points elsewhere; a run without findings is refused."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ecgshard.zeroshot import Scorer

    rng = np.random.default_rng(1)
    d = 16
    basis = np.eye(d)
    findings = basis[[1, 2, 3]]                      # three trained statements
    text = 0.6 * basis[1] + 0.8 * basis[5]           # nearest statement 1, mostly elsewhere
    rows = text[None, :] / np.linalg.norm(text)
    has = rng.random(300) < 0.5
    emb = rng.normal(0, 0.3, (300, d)) + np.outer(has, basis[1])     # positives on statement 1
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    train = basis[[7, 8]]
    plain = roc_auc_score(has, Scorer("cosine", train, rows)(emb, rows)[:, 0])
    through = Scorer("findings", train, rows, findings)
    read = through.rows(rows)[0]
    assert np.isclose(np.linalg.norm(read), 1) and read[1] > rows[0, 1]
    assert read[2] == pytest.approx(read[3]) and read[2] < 0.05      # far statements weigh ~0
    assert roc_auc_score(has, through(emb, rows)[:, 0]) > plain
    with pytest.raises(ECGShardError, match="--findings"):
        Scorer("findings", train, rows, np.zeros((0, d)))


def test_a_definition_is_read_in_the_statements_sentence_by_sentence():
    """A definition's one embedding can sit nearest a statement none of its parts means (as
    "sinus bradycardia: heart rate below 60, ..." sits near "heart rate above 120"): read
    sentence by sentence, each part finds its own statement, and records the encoder placed
    on those statements score higher than through the blurred row."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ecgshard.zeroshot import Scorer

    rng = np.random.default_rng(3)
    d = 16
    basis = np.eye(d)
    findings = basis[[1, 2, 3]]
    row = 0.45 * basis[1] + 0.45 * basis[2] + 0.6 * basis[3] + 0.5 * basis[6]
    rows = row[None] / np.linalg.norm(row)
    sentences = [np.stack([0.9 * basis[1] + 0.44 * basis[7], 0.9 * basis[2] + 0.44 * basis[8]])]
    score = Scorer("findings", basis[[9, 10]], rows, findings)
    blurred, parts = score.reading(rows)[0], score.reading(rows, sentences)[0]
    assert blurred[3] > max(blurred[1], blurred[2])          # the row reads the wrong statement
    assert parts[1] == pytest.approx(parts[2]) and parts[3] < 0.05
    has = rng.random(400) < 0.5
    emb = rng.normal(0, 0.4, (400, d)) + np.outer(has, basis[1] + basis[2]) \
        + np.outer(rng.random(400) < 0.5, basis[3])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert roc_auc_score(has, score(emb, rows, sentences=sentences)[:, 0]) > \
        roc_auc_score(has, score(emb, rows)[:, 0]) + 0.05
    # the row alone is the sentence-less reading, exactly
    np.testing.assert_allclose(score.reading(rows, [rows]), score.reading(rows), atol=1e-7)
    assert score(emb, rows[:0]).shape == (400, 0)           # no classes: no scores, no error
    with pytest.raises(ECGShardError, match="2 sets of reading sentences for 1 rows"):
        score.reading(rows, sentences * 2)


def test_a_matrix_from_before_reading_sentences_reads_rows_and_says_so(
        demo_data, demo_run, demo_text, tmp_path, caplog):
    from ecgshard import shards

    m = shards.read_text_matrix(demo_text)
    attrs = {k: v for k, v in m.attrs.items() if k not in ("schema_version", "content_sha256")}
    old = tmp_path / "old.h5"
    shards.write_text_matrix(old, m.emb, m.codes, m.texts, m.names, attrs,
                             (m.finding_codes, m.finding_texts, m.finding_emb))
    quick = dict(shards=str(demo_data / "s-ptbxl"), classes="all", control=False,
                 bootstrap=0, permutations=0)
    with caplog.at_level("WARNING", logger="ecgshard.zeroshot"):
        rows = _zs(demo_data, demo_run, old, tmp_path / "rows", **quick)
    assert "predates reading sentences" in caplog.text and str(old) in caplog.text
    sentences = _zs(demo_data, demo_run, demo_text, tmp_path / "sentences", **quick)
    assert rows["provenance"]["statement_reading"] == "row"
    assert sentences["provenance"]["statement_reading"] == "sentences"
    unseen = [(a, b) for a, b in zip(rows["classes"], sentences["classes"])
              if a["group"] == "unseen" and a["auroc"] is not None]
    seen = [(a, b) for a, b in zip(rows["classes"], sentences["classes"])
            if a["group"] == "seen" and a["auroc"] is not None]
    assert unseen and any(a["auroc"] != pytest.approx(b["auroc"]) for a, b in unseen)
    assert all(a["auroc"] == pytest.approx(b["auroc"]) for a, b in seen)    # cosine alike


def test_a_text_matrix_of_other_texts_is_refused_naming_what_differs(demo_run, demo_data,
                                                                    tmp_path):
    from ecgshard import text
    from ecgshard.config import TextConfig, ZeroShotConfig

    other = tmp_path / "names.h5"
    text.run(TextConfig(vocab=(str(demo_data / "s-ptbxl"),), out=str(other),
                        model="minilm-offline", texts="name", device="cpu"))
    with pytest.raises(ECGShardError, match=r"text_mode: 'both' \(run\) vs 'name' \(given\)"):
        zeroshot.run(ZeroShotConfig(run=str(demo_run), shards=str(demo_data / "s-ptbxl"),
                                    text=str(other), out=str(tmp_path / "z"), device="cpu"))


def test_findings_unseen_reads_only_the_marked_rows_through_the_statements():
    import numpy as np

    from ecgshard.zeroshot import Scorer

    rng = np.random.default_rng(2)
    rows = rng.normal(size=(3, 8))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    findings, emb = np.eye(8)[:4], rng.normal(size=(5, 8))
    mixed = Scorer("findings-unseen", rows, rows, findings)
    through = np.array([True, False, True])
    got = mixed(emb, rows, through)
    np.testing.assert_allclose(got[:, through], Scorer("findings", rows, rows, findings)(
        emb, rows)[:, through], atol=1e-6)
    np.testing.assert_allclose(got[:, ~through], emb @ rows[~through].T, atol=1e-6)
    np.testing.assert_allclose(mixed(emb, rows), emb @ rows.T, atol=1e-6)   # nothing marked
    # a run without statements: cosine throughout, not an error
    np.testing.assert_allclose(Scorer("findings-unseen", rows, rows, None)(emb, rows, through),
                               emb @ rows.T, atol=1e-6)


def test_the_default_scoring_reads_unseen_classes_through_the_statements_and_no_other(
        demo_data, demo_run, demo_text, tmp_path):
    """Per class, the default (findings-unseen) gives an unseen class what --scoring findings
    gives it, wrong-text null included, and a trained class what cosine gives it."""
    quick = dict(shards=str(demo_data / "s-ptbxl"), classes="all", control=False,
                 bootstrap=0, permutations=0)
    by = {}
    for scoring in ("findings-unseen", "findings", "cosine"):
        report = _zs(demo_data, demo_run, demo_text, tmp_path / scoring, scoring=scoring,
                     **quick)
        by[scoring] = {c["code"]: c for c in report["classes"] if c["auroc"] is not None}
        assert report["provenance"]["statement_reading"] == "sentences"   # embed-text kept them
    default = by["findings-unseen"]
    unseen = [c for c, row in default.items() if row["group"] == "unseen"]
    seen = [c for c, row in default.items() if row["group"] == "seen"]
    assert unseen and seen
    for code in unseen:
        assert default[code]["auroc"] == pytest.approx(by["findings"][code]["auroc"])
        assert default[code]["wrong_text"]["mean"] == pytest.approx(
            by["findings"][code]["wrong_text"]["mean"])
    for code in seen:
        assert default[code]["auroc"] == pytest.approx(by["cosine"][code]["auroc"])
        assert default[code]["wrong_text"]["mean"] == pytest.approx(
            by["cosine"][code]["wrong_text"]["mean"])
    assert any(by["findings"][c]["auroc"] != pytest.approx(by["cosine"][c]["auroc"])
               for c in unseen)                                # the rule made a difference
    # each class read through the statements names the statements it was read through
    from ecgshard.findings import is_finding

    for code in unseen:
        read = default[code]["read_through"]
        assert read == by["findings"][code]["read_through"]
        assert read and all(is_finding(r["code"]) and r["text"] for r in read)
        weights = [r["weight"] for r in read]
        assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-3
        assert by["cosine"][code]["read_through"] is None
    assert all(default[code]["read_through"] is None for code in seen)


def test_zeroshot_reports_how_well_each_trained_statement_is_told(demo_data, demo_run,
                                                                   demo_text, tmp_path):
    """Beside the classes, each trained statement's AUROC on the evaluated records (the
    encoder's cosine to its text against the rule's label from the shard's measurements), and
    each statement a class was read through carries it."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ecgshard import shards
    from ecgshard.data import Selection, load_selection
    from ecgshard.run import Run

    report = _zs(demo_data, demo_run, demo_text, tmp_path / "z", classes="all",
                 shards=str(demo_data / "s-ptbxl"), control=False, bootstrap=0, permutations=0)
    told = report["references"]["trained_statements_same_records"]
    run = Run.load(demo_run)
    assert list(told["per_statement"]) == run.finding_codes
    vocab = shards.class_codes(shards.load_manifest(demo_data / "s-ptbxl"))
    data = load_selection(Selection(str(demo_data / "s-ptbxl"),
                                    tuple(report["provenance"]["folds"]), tuple(vocab),
                                    findings=tuple(run.finding_codes)))
    labels = data["labels"][:, len(vocab):]
    scores = run.encoder().encode(data["signal"], data["length"]) @ run.finding_rows.T
    recomputed = [roc_auc_score(labels[:, j], scores[:, j]) if 0 < labels[:, j].sum() < len(labels)
                  else None for j in range(len(run.finding_codes))]
    for (code, row), auroc, column in zip(told["per_statement"].items(), recomputed, labels.T):
        assert row["n_pos"] == column.sum()
        assert (row["auroc"] is None) == (auroc is None)
        if auroc is not None:
            assert row["auroc"] == pytest.approx(auroc, abs=1e-5)
    assert told["n_statements"] == sum(a is not None for a in recomputed)
    assert told["macro_auroc"] == pytest.approx(np.mean([a for a in recomputed if a is not None]),
                                                abs=1e-5)
    # the synthetic records' planted rates and widths are learned, not guessed
    assert told["macro_auroc"] > 0.75
    read = [s for c in report["classes"] for s in c["read_through"] or []]
    assert read and all(s["auroc_here"] == told["per_statement"][s["code"]]["auroc"] for s in read)
    from ecgshard.report import num, report_table

    row = next(line for line in report_table([tmp_path / "z"]) if "trained statements" in line)
    assert row.split()[-1] == num(told["macro_auroc"])


def test_statements_are_told_only_from_shards_measured_as_this_version_measures():
    from ecgshard import findings, measure
    from ecgshard.zeroshot import _measured_statements

    class Trained:
        finding_codes = ["finding:rate_50_59", "finding:qrs_120_139"]

    whole = {"version": measure.VERSION, "names": list(findings.NEEDS)}
    assert _measured_statements(Trained, {"measurements": whole}) == tuple(Trained.finding_codes)
    assert _measured_statements(Trained, {}) == ()
    assert _measured_statements(Trained, {"measurements": dict(whole, version=0)}) == ()
    assert _measured_statements(Trained, {"measurements": dict(whole, names=["heart_rate"])}) == ()
