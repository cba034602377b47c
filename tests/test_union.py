"""One fit over several shard sets: the union of their classes, a held-out concept held out in
every code system, labels merged by concept, sampling weights, one signal path."""
import json

import numpy as np
import pytest

from ecgshard import data, fit, shards, zeroshot
from ecgshard.config import ZeroShotConfig
from ecgshard.errors import ECGShardError


def _sets(demo_data):
    return (str(demo_data / "s-ptbxl"), str(demo_data / "s-cinc"))


def _carrying(shard_dir, folds, codes):
    """Records of ``folds`` that mention any of ``codes``, read straight from the shards."""
    manifest = shards.load_manifest(shard_dir)
    index = [i for i, c in enumerate(shards.class_codes(manifest)) if c in set(codes)]
    n = 0
    for path, expected in shards.shard_entries(shard_dir, manifest).items():
        with shards.open_shard(path, expected) as f:
            in_folds = np.isin(f[shards.FOLD][...], folds)
            n += int((in_folds & shards.read_mentioned(f)[:, index].any(axis=1)).sum())
    return n


@pytest.fixture(scope="module")
def union_run(demo_data, demo_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("union") / "run"
    fit.run(fit.FitConfig(shards=_sets(demo_data), text=str(demo_text), out=str(out),
                          holdout=("SBRAD",), holdout_expand=True, epochs=2, batch_size=64,
                          device="cpu", min_positives=3))
    return out


def test_holding_out_a_concept_holds_it_out_in_every_code_system(demo_data, union_run):
    info = shards.read_run_info(union_run)
    # SCP's SBRAD and SNOMED's sinus bradycardia are one concept: both are held out
    assert {"SBRAD", "426177001"} <= set(info.holdout)
    assert not {"SBRAD", "426177001"} & set(info.train_codes)
    train = info.folds["train"]
    for shard_dir, record in zip(_sets(demo_data), info.shard_sets):
        carrying = _carrying(shard_dir, train, info.holdout)
        assert carrying > 0
        assert record["records_excluded_for_heldout_labels"]["train"] == carrying
        assert record["shards"] == str(shards.Path(shard_dir).resolve())
    assert info.records["train"] == sum(s["records"]["train"] for s in info.shard_sets)
    check = json.loads((union_run / "heldout_check.json").read_text())
    assert check["passed"] and check["records_with_heldout_label_seen"] == 0
    assert check["records_seen"] > 0
    # both code systems are trained, and each set's validation is logged
    assert {"SR", "426783006"} <= set(info.train_codes)
    log = [json.loads(line) for line in (union_run / "log.jsonl").read_text().splitlines()]
    assert set(log[-1]["val_macro_auroc_by_set"]) == set(_sets(demo_data))


def test_a_class_takes_its_labels_from_each_sets_code_of_the_same_concept(demo_data, demo_text):
    p = fit.plan(fit.FitConfig(shards=_sets(demo_data), text=str(demo_text), out="x",
                               min_positives=3))
    codes = p.train_codes
    for sel, own in zip(p.train_sel, ("SR", "426783006")):
        loaded = data.load_selection(sel)
        sr, snomed_sr = (loaded["labels"][:, codes.index(c)] for c in ("SR", "426783006"))
        # the set's own code and its synonym from the other code system label alike
        np.testing.assert_array_equal(sr, snomed_sr)
        assert sr.sum() > 0
    # a Challenge-only concept (no PTB-XL code of it) is negative throughout PTB-XL
    ptbxl = data.load_selection(p.train_sel[0])
    assert ptbxl["labels"][:, codes.index("164865005")].sum() == 0


def test_zeroshot_on_one_set_of_a_union_run(demo_data, demo_text, union_run, tmp_path):
    report = zeroshot.run(ZeroShotConfig(run=str(union_run), shards=str(demo_data / "s-cinc"),
                                         text=str(demo_text), out=str(tmp_path / "z"),
                                         bootstrap=0, control=False, permutations=0,
                                         device="cpu"))
    provenance = report["provenance"]
    assert provenance["same_shard_set_as_training"]            # its test folds only
    assert provenance["folds"] == [10]
    assert "426177001" in [c["code"] for c in report["classes"]]


def _set_zero_share(demo_data, make_loader, epochs):
    """The share of drawn records that come from the first set: its records carry a marker
    column (any of its labels), the second set's never do."""
    sels = []
    for i, d in enumerate(_sets(demo_data)):
        codes = shards.class_codes(shards.load_manifest(d))
        sels.append(data.Selection(d, tuple(range(1, 11)), ("marker",),
                                   class_sources=(tuple(codes) if i == 0 else (),)))
    labelled = data.load_selection(sels[0])["labels"].mean()
    loader = make_loader(sels)
    marks = [b["labels"][:, 0].float().mean().item() for e in range(epochs)
             for b in loader.epoch(e)]
    return np.mean(marks) / labelled


@pytest.mark.parametrize("kind", ["preload", "stream"])
def test_shard_weights_set_each_sets_share_of_an_epoch(demo_data, kind):
    def make(weights):
        if kind == "preload":
            return lambda sels: data.Preloaded(sels, 20, "cpu", seed=0, weights=weights)
        return lambda sels: data.StreamLoader(sels, 20, "cpu", seed=0, workers=0,
                                              weights=weights)
    epochs = 3 if kind == "preload" else 60
    n0, n1 = (shards.load_manifest(d)["n_records"] for d in _sets(demo_data))
    by_size = _set_zero_share(demo_data, make(()), epochs)
    assert by_size == pytest.approx(n0 / (n0 + n1), abs=0.03)
    weighted = _set_zero_share(demo_data, make((1.0, 3.0)), epochs)
    assert weighted == pytest.approx(0.25, abs=0.06)


def test_shard_sets_of_another_signal_path_are_refused_naming_both(demo_data, demo_text,
                                                                   tmp_path):
    from ecgshard import build

    other = tmp_path / "cinc50"
    build.run(build.BuildConfig(source_dir=str(demo_data / "cinc"), out_dir=str(other),
                                format="cinc2021", fs=50, workers=1))
    with pytest.raises(ECGShardError, match=r"another signal path .*fs: 100 vs 50"):
        fit.plan(fit.FitConfig(shards=(str(demo_data / "s-ptbxl"), str(other)),
                               text=str(demo_text), out="x"))


def test_one_weight_per_shard_set():
    with pytest.raises(ECGShardError, match="one weight > 0 per --shards"):
        fit.FitConfig(shards=("a", "b"), text="t", out="o", shard_weights=(1.0,))


def test_the_cli_takes_several_shard_sets(demo_data, demo_text, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ecgshard.cli import main

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"best_val_macro_auroc": 0.5}

    monkeypatch.setattr(fit, "run", fake_run)
    a, b = _sets(demo_data)
    result = CliRunner().invoke(main, ["fit", "--shards", a, "--shards", b, "--shard-weight",
                                       "2", "--shard-weight", "1", "--text", str(demo_text),
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].shards == (a, b) and seen["cfg"].shard_weights == (2.0, 1.0)


def test_a_statement_vocabulary_joins_a_code_vocabulary_by_concept(demo_data, demo_text,
                                                                   tmp_path):
    """PTB-XL codes and MIMIC-IV-ECG machine statements in one fit: a statement that names a
    concept labels with its code, and holding the concept out holds out its statements."""
    from ecgshard import build, synth, text

    synth.write_mimic_iv_ecg(tmp_path / "raw", n_records=120, seed=5)
    mimic = tmp_path / "s-mimic"
    build.run(build.BuildConfig(source_dir=str(tmp_path / "raw"), out_dir=str(mimic),
                                format="mimic-iv-ecg", fs=100, min_count=2, workers=1))
    sets = (str(demo_data / "s-ptbxl"), str(mimic))
    both = tmp_path / "text.h5"
    text.run(text.TextConfig(vocab=sets, out=str(both), model="minilm-offline", device="cpu"))
    p = fit.plan(fit.FitConfig(shards=sets, text=str(both), out="x", min_positives=2,
                               holdout=("SBRAD",), holdout_expand=True))
    assert {"SBRAD", "sinus bradycardia"} <= set(p.holdout)
    carrying = _carrying(str(mimic), list(range(1, 9)), p.holdout)
    assert carrying > 0
    assert p.sets[1]["records_excluded_for_heldout_labels"]["train"] == carrying
    codes = p.train_codes
    assert {"SR", "sinus rhythm"} <= set(codes)
    loaded = data.load_selection(p.train_sel[1])
    np.testing.assert_array_equal(loaded["labels"][:, codes.index("SR")],
                                  loaded["labels"][:, codes.index("sinus rhythm")])


def test_two_codes_of_one_concept_in_one_set_label_the_same_records(demo_data, demo_text):
    """The Challenge scores 59118001 and 713427006 (RBBB) as one diagnosis: trained from one
    set, each column is positive on the records carrying either, never negative on the
    other's."""
    shard_dir = str(demo_data / "s-cinc")
    p = fit.plan(fit.FitConfig(shards=shard_dir, text=str(demo_text), out="x", min_positives=2))
    codes = p.train_codes
    assert {"59118001", "713427006"} <= set(codes)
    loaded = data.load_selection(p.train_sel[0])
    rbbb = loaded["labels"][:, [codes.index("59118001"), codes.index("713427006")]]
    np.testing.assert_array_equal(rbbb[:, 0], rbbb[:, 1])
    raw = data.load_selection(data.Selection(shard_dir, tuple(p.train_sel[0].folds),
                                             ("59118001", "713427006")))
    np.testing.assert_array_equal(rbbb[:, 0], raw["labels"].max(axis=1))
    assert (raw["labels"][:, 0] != raw["labels"][:, 1]).any()    # the raw codes differ
