"""Measured findings (ecgshard.findings): statements that name no diagnosis, labels by their
rules, embedded beside the classes, trained as extra targets without ever training a held-out
class, and learned from the signal."""
from __future__ import annotations

import csv
import json
import re
from importlib import resources

import h5py
import numpy as np
import pytest

from ecgshard import data, findings, fit, measure, shards, synth
from ecgshard.errors import ECGShardError


def _shipped_names():
    """Every name and synonym of every vocabulary the package ships: the class texts (PTB-XL
    statements and Challenge/SNOMED classes), the SNOMED table and the synthetic PTB-XL table.
    Code abbreviations are codes, not names ("PR" abbreviates pacing rhythm in the Challenge's
    table; "PR interval" does not name it)."""
    root = resources.files("ecgshard") / "data"
    names = set()
    table = json.loads((root / "class_texts.json").read_text())
    for entry in table["classes"].values():
        names.update(entry.get("synonyms", []))
    with (root / "snomed_ct.csv").open() as f:
        for row in csv.DictReader(f):
            names.add(row["name"])
    names.update(v[0] for v in synth.SCP_USED.values())
    return {n.strip().lower() for n in names if n and n.strip()}


def test_no_finding_statement_names_a_diagnosis():
    names = _shipped_names()
    assert len(names) > 200                       # the vocabularies were read
    for statement in findings.texts()[1]:
        lowered = statement.lower()
        named = [n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", lowered)]
        assert not named, f"{statement!r} names {named}"


def test_vocabulary_is_fixed_and_every_rule_reads_measurements():
    codes, statements = findings.texts()
    assert len(set(codes)) == len(codes) == len(set(statements)) == len(findings.FINDINGS)
    assert all(findings.is_finding(c) for c in codes)
    assert set(findings.NEEDS) <= set(measure.NAMES)
    assert {f.family for f in findings.FINDINGS} == set(findings.FAMILIES)


def _measured(**values):
    m = {n: np.full(1, np.nan) for n in findings.NEEDS}
    m.update({k: np.atleast_1d(np.asarray(v, float)) for k, v in values.items()})
    return m


@pytest.mark.parametrize("values,true,false", [
    ({"heart_rate": 55}, ["rate_50_59"], ["rate_below_50", "rate_60_100"]),
    ({"heart_rate": 100.2}, ["rate_60_100"], ["rate_101_120"]),
    ({"heart_rate": 130}, ["rate_above_120"], ["rate_101_120"]),
    ({"rr_cv": 0.2}, ["rr_irregular"], ["rr_regular"]),
    ({"pr": 240}, ["pr_over_200"], ["pr_120_200"]),
    ({"qrs": 128}, ["qrs_120_139"], ["qrs_under_100", "qrs_140_plus"]),
    ({"qtc": 480}, ["qtc_over_470"], ["qtc_under_450"]),
    ({"qrs_axis": -50}, ["axis_below_minus30"], ["axis_minus30_90", "axis_over_90"]),
    ({"qrs_axis": 150}, ["axis_over_90"], ["axis_below_minus30"]),
    ({"p_wave_ratio": 0.1, "p_wave_consistency": 0.95}, ["p_waves"], ["no_p_waves"]),
    ({"p_wave_ratio": 0.1, "p_wave_consistency": 0.4}, ["no_p_waves"], ["p_waves"]),
    ({"premature_beats": 2, "aberrant_beats": 1}, ["early_beats", "odd_qrs_beats"], []),
    ({**{f"qrs_amplitude_{x}": 0.3 for x in ("I", "II", "III", "aVR", "aVL", "aVF")},
      "z_scored_source": 0}, ["limb_qrs_under_05"], ["chest_qrs_under_1"]),
    ({"sokolow_lyon": 4.0, "z_scored_source": 0}, ["sokolow_over_35"], []),
    # the same amplitudes in z-units say nothing in mV
    ({**{f"qrs_amplitude_{x}": 0.3 for x in ("I", "II", "III", "aVR", "aVL", "aVF")},
      "sokolow_lyon": 4.0, "z_scored_source": 1}, [], ["limb_qrs_under_05", "sokolow_over_35"]),
])
def test_rules(values, true, false):
    codes = [findings.PREFIX + k for k in true + false]
    got = findings.labels(_measured(**values), codes)[0]
    assert got.tolist() == [1] * len(true) + [0] * len(false)


def test_a_measurement_that_is_nan_makes_every_statement_reading_it_negative():
    codes = [f.code for f in findings.FINDINGS]
    assert findings.labels(_measured(), codes).sum() == 0


def test_embed_text_embeds_the_statements_under_the_class_templates(demo_text):
    matrix = shards.read_text_matrix(demo_text)
    codes, statements = findings.texts()
    assert matrix.finding_codes == codes and matrix.finding_texts == statements
    rows = matrix.finding_rows(codes[:3])
    assert rows.shape == (3, matrix.emb.shape[1])
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert not set(codes) & set(matrix.codes)           # never a class to score or hold out
    with pytest.raises(shards.SchemaError, match="measured-finding"):
        matrix.finding_rows(["finding:nothing"])


def test_finding_columns_follow_the_measurements_in_the_shards(demo_data):
    shard_dir = demo_data / "s-ptbxl"
    every = tuple(f.code for f in findings.FINDINGS)
    sel = data.Selection(str(shard_dir), (1, 2, 3, 4, 5, 6, 7, 8), ("NORM",), findings=every)
    loaded = data.load_selection(sel)
    assert loaded["labels"].shape[1] == 1 + len(every)
    manifest = shards.load_manifest(shard_dir)
    measured = []
    for p in shards.shard_paths(shard_dir, manifest):
        with h5py.File(p, "r") as f:
            keep = np.isin(f["fold"][...], sel.folds)
            m = shards.read_measurements(f, findings.NEEDS)
            measured.append({k: v[keep] for k, v in m.items()})
    expected = findings.labels({k: np.concatenate([m[k] for m in measured])
                                for k in findings.NEEDS}, every)
    np.testing.assert_array_equal(loaded["labels"][:, 1:], expected)


@pytest.mark.parametrize("holdout,withheld,kept", [
    (["LAFB/LPFB"], ["axis_below_minus30", "axis_over_90"], ["late_up_v1", "qrs_120_139"]),
    # the rest of a withheld statement's quantity goes with it: its complement, trained alone,
    # would be the held-out text's nearest and score it backwards
    (["LAFB"], ["axis_below_minus30", "axis_minus30_90", "axis_over_90"], ["qrs_100_119"]),
    (["SBRAD"], ["rate_below_50", "rate_50_59", "rate_60_100", "rate_101_120"],
     ["rr_regular", "p_waves"]),
    # over 100 per minute is tachycardia, the parent of sinus and supraventricular tachycardia
    (["STACH"], ["rate_101_120", "rate_above_120", "rate_60_100", "rate_below_50"],
     ["rr_regular", "p_waves"]),
    (["PSVT"], ["rate_above_120", "rate_101_120"], ["rr_irregular"]),
    (["QWAVE"], ["q_inferior", "q_anterior", "q_lateral"], ["st_up_inferior"]),
    (["IMI"], ["q_inferior", "st_up_inferior"], ["late_up_v1", "pr_120_200"]),
    (["ISC_"], ["st_down_lateral", "t_negative_lateral"], ["q_lateral", "late_up_v1"]),
    (["CRBBB", "IRBBB"], [], ["late_up_v1", "late_down_lateral", "qrs_120_139"]),
])
def test_a_statement_restating_a_heldout_concept_is_withheld(holdout, withheld, kept):
    got = fit.findings_withheld(holdout)
    assert {findings.PREFIX + k for k in withheld} <= set(got)
    assert not {findings.PREFIX + k for k in kept} & set(got)
    assert all("restates" in why or "as withheld" in why for why in got.values())


def test_a_trained_statement_counts_as_training_what_it_restates():
    statuses = findings.statuses(["39732003", "LAFB", "CRBBB"], ["NORM"],
                                 ["finding:axis_below_minus30"])
    assert statuses["39732003"].group == "seen"
    assert statuses["LAFB"].group == "related"
    assert statuses["LAFB"].via == "finding:axis_below_minus30"
    assert "pointing left" in statuses["LAFB"].why
    assert statuses["CRBBB"].group == "unseen"
    # a fast rate is tachycardia: sinus and supraventricular tachycardia are its children
    fast = findings.statuses(["STACH", "426761007", "SBRAD"], ["NORM"],
                             ["finding:rate_above_120"])
    assert fast["STACH"].group == fast["426761007"].group == "related"
    assert fast["STACH"].via == "finding:rate_above_120"
    assert fast["SBRAD"].group == "unseen"


def test_fit_with_findings_trains_them_and_never_a_heldout_class(demo_data, demo_text,
                                                                 tmp_path):
    out = tmp_path / "run"
    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out=str(out),
                          holdout=("CLBBB",), epochs=8, batch_size=64, device="cpu",
                          min_positives=3, findings=True))
    info = shards.read_run_info(out)
    assert "CLBBB" in info.holdout and "CLBBB" not in info.train_codes
    assert info.finding_codes and all(findings.is_finding(c) for c in info.finding_codes)
    assert all(info.finding_positives[c] >= 3 for c in info.finding_codes)
    assert info.findings_withheld == fit.findings_withheld(info.holdout)
    assert not set(info.findings_withheld) & set(info.finding_codes)
    check = json.loads((out / "heldout_check.json").read_text())
    assert check["passed"] and check["records_with_heldout_label_seen"] == 0
    ck = shards.load_checkpoint(out / "checkpoint-last.pt")
    assert len(ck["text_emb_train"]) == len(info.train_codes) + len(info.finding_codes)
    assert ck["validation"]["labels"].shape[1] == len(info.train_codes)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert 0 <= log[-1]["val_findings_macro_auroc"] <= 1
    # the planted rates are learned from the signal, through the statements' texts
    from sklearn.metrics import roc_auc_score

    from ecgshard.run import Run

    run = Run.load(out, "last")
    wanted = ("finding:rate_above_120", "finding:rate_below_50")
    sel = data.Selection(str(demo_data / "s-ptbxl"), (9, 10), tuple(info.train_codes),
                         tuple(info.holdout), findings=wanted)
    held = data.load_selection(sel)
    emb = run.encoder().encode(held["signal"], held["length"], device="cpu")
    rows = run.finding_rows[[info.finding_codes.index(c) for c in wanted]]
    for j, code in enumerate(wanted):
        y = held["labels"][:, len(info.train_codes) + j]
        assert 3 <= y.sum() < len(y)
        assert roc_auc_score(y, emb @ rows[j]) > 0.8, code


def test_the_findings_sigmoid_joins_the_loss_only_where_statements_train(
        demo_data, demo_text, tmp_path):
    from ecgshard.distributed import World
    from ecgshard.losses import FindingsSigmoidLoss, TextSmoothedCLIPLoss

    def trainer(**options):
        cfg = fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                            out=str(tmp_path / "r"), device="cpu", min_positives=3, **options)
        return fit.Trainer(cfg, fit.plan(cfg), "cpu", World())

    joined = trainer(findings_sigmoid=2.0)
    assert isinstance(joined.loss_fn, FindingsSigmoidLoss) and joined.loss_fn.weight == 2.0
    assert joined.loss_fn.n_classes == len(joined.p.train_codes) < len(joined.text_rows)
    assert joined.model.logit_bias.requires_grad          # the sigmoid reads the bias
    for plain in (trainer(), trainer(findings=False, findings_sigmoid=1.0)):
        assert isinstance(plain.loss_fn, TextSmoothedCLIPLoss)
        assert not plain.model.logit_bias.requires_grad
    with pytest.raises(ECGShardError, match="--findings-sigmoid must be >= 0"):
        trainer(findings_sigmoid=-1.0)


def test_fit_with_findings_refuses_shards_without_measurements(demo_data, demo_text,
                                                               tmp_path):
    from ecgshard import build

    plain = tmp_path / "plain"
    build.run(build.BuildConfig(source_dir=str(demo_data / "ptbxl"), out_dir=str(plain),
                                workers=1, measure=False, limit=300))
    cfg = fit.FitConfig(shards=str(plain), text=str(demo_text), out=str(tmp_path / "r"),
                        epochs=1, batch_size=32, device="cpu", findings=True,
                        train_folds=(1, 2, 3), val_folds=(4,), test_folds=(5,))
    with pytest.raises(ECGShardError, match="ecgshard measure"):
        fit.run(cfg)
    # measurements of another version are refused before training, naming both versions
    build.measure_shards(str(plain), workers=1)
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["measurements"]["version"] = measure.VERSION - 1
    (plain / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ECGShardError, match=f"measurements schema version {measure.VERSION - 1}, "
                                            f"this ecgshard reads {measure.VERSION}"):
        fit.run(cfg)
    assert not list((tmp_path / "r").glob("checkpoint-*.pt"))
