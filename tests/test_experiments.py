import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ecgshard import concepts, controls, data, experiments, fit, shards
from ecgshard.config import FitConfig, TextConfig, ZeroShotConfig
from ecgshard.errors import ECGShardError


def _cfg(demo_data, tmp_path, loss="clip", **kw):
    base = dict(
        work=str(tmp_path / "work"), ptbxl=str(demo_data / "ptbxl"),
        text=TextConfig(vocab=(), out="", model="minilm-offline", device="cpu"),
        fit=FitConfig(shards="", text="", out="", epochs=1, batch_size=32, min_positives=2,
                      device="cpu", max_steps=3, loss=loss),
        zeroshot=ZeroShotConfig(run="", shards="", text="", out="", bootstrap=10,
                                control_seeds=3, min_positives=3, device="cpu"),
        splits=2, holdout_size=2, min_val_positives=3, results=str(tmp_path / "results.md"),
        label="tiny test", command="bin/experiment-a tiny")
    return experiments.ExperimentConfig(**{**base, **kw})


def test_experiment_a_writes_and_replaces_its_section(demo_data, tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nintro kept\n")
    cfg = _cfg(demo_data, tmp_path)
    out = experiments.run_a(cfg)
    assert len(out["splits"]) == 2
    assert out["splits"][0] == ["LAFB", "LVOLT", "PVC", "SBRAD"]   # the default, where present
    text = results.read_text()
    assert "intro kept" in text and text.count("experiment-a-tiny-test:begin") == 1
    assert "unseen (held-out) classes, macro AUROC" in text and "| 1 |" in text
    assert "untrained encoders, same instances (3 seeds" in text
    # one headline over every (split, class) instance, with the class-specificity controls
    pooled = out["pooled_unseen"]
    reports = [json.loads((Path(r) / "report.json").read_text())
               for r in out["reports"]]
    instances = [c for r in reports for c in r["classes"]
                 if c["code"] in r["groups"].get("unseen", {}).get("classes", [])]
    assert pooled["n_instances"] == len(instances) > 0
    assert pooled["macro_auroc"] == pytest.approx(sum(c["auroc"] for c in instances)
                                                  / len(instances), abs=1e-5)
    lo, hi = pooled["macro_auroc_ci"]
    assert lo <= hi and pooled["bootstrap"] == "patients and classes"
    assert pooled["same_records_every_split"]
    assert 0 < pooled["wrong_text"]["p"] <= 1 and "verdict" in pooled
    assert f"| **verdict** | {pooled['verdict']} |" in text
    # the split counts are over the splits with an unseen macro, and name those without one
    macros = [r["groups"].get("unseen", {}).get("macro_auroc") for r in reports]
    judged = sum(m is not None for m in macros)
    specific = sum(bool(r["groups"].get("unseen", {}).get("class_specific")) for r in reports)
    without = f" ({len(macros) - judged} without)" if judged < len(macros) else ""
    assert f"(beats the wrong-text null) | {specific} of {judged} with a macro{without} |" \
        in text
    claimed = sum(bool(r["groups"].get("unseen", {}).get("zero_shot_claim")) for r in reports)
    assert f"(beats all three controls) | {claimed} of {judged} with a macro{without} |" in text
    assert pooled["zero_shot_claim"] == (controls.unbeaten(pooled) == [])
    assert "wrong-text null" in text and "published" not in text
    assert "Command: `bin/experiment-a tiny`" in text
    # how unseen classes were scored, and what each was read through
    assert "Scoring: `findings-unseen`, classes read through the statements sentence by " \
           "sentence" in text
    read = [c["read_through"] for c in instances if c["read_through"]]
    assert "| trained measured-finding statements, macro AUROC, mean over splits | " in text
    told = [s for statements in read for s in statements[:3] if s["auroc_here"] is not None]
    assert told and f"{told[0]['text']} ({told[0]['weight']:.2f}, AUROC " \
        f"{told[0]['auroc_here']:.2f})" in text       # beside its weight, how well it is told
    # the table names the holdout each run used (closed), not the drawn one
    for split, report in zip(out["splits"], out["reports"]):
        used = json.loads((Path(report) / "report.json")
                          .read_text())["provenance"]["holdout"]
        assert used == split and f"| {', '.join(used)} |" in text
    experiments.run_a(cfg)                                # a rerun reuses and replaces
    assert results.read_text().count("experiment-a-tiny-test:begin") == 1


def test_runs_are_reused_only_for_identical_settings(demo_data, tmp_path):
    cfg = _cfg(demo_data, tmp_path, splits=1)
    work = tmp_path / "work"
    experiments.run_a(cfg)
    first = sorted(p.name for p in (work / "runs").iterdir())
    experiments.run_a(cfg)                                # same settings: the same run
    assert sorted(p.name for p in (work / "runs").iterdir()) == first
    experiments.run_a(_cfg(demo_data, tmp_path, splits=1, loss="bce"))
    runs = sorted((work / "runs").iterdir())
    assert len(runs) == 2                                 # another loss is another run
    configs = [json.loads((r / "config.json").read_text())["config"]["loss"] for r in runs]
    assert sorted(configs) == ["bce", "clip"]
    # a summary whose settings differ from its directory's is refused, naming the field
    summary = runs[0] / "summary.json"
    done = json.loads(summary.read_text())
    done["key"]["text_sha256"] = "0" * 64
    summary.write_text(json.dumps(done))
    loss = json.loads((runs[0] / "config.json").read_text())["config"]["loss"]
    with pytest.raises(ECGShardError, match="text_sha256"):
        experiments.run_a(_cfg(demo_data, tmp_path, splits=1, loss=loss))


def test_a_moved_working_directory_keeps_its_runs(demo_data, tmp_path, monkeypatch):
    """Runs are keyed by what they trained on (the shards' fingerprint, the text's hash), not
    by where the working directory lies: a copy elsewhere scores the same runs without
    training, as does a run keyed, as before, with its shard and text paths."""
    import shutil

    experiments.run_a(_cfg(demo_data, tmp_path, splits=1))
    (run,) = [p for p in (tmp_path / "work" / "runs").iterdir()]
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "work", moved)
    summary = moved / "runs" / run.name / "summary.json"
    done = json.loads(summary.read_text())
    assert not {"shards", "text"} & set(done["key"]["config"])
    # as keys were before: with the paths, under the name they made
    done["key"]["config"].update(shards=str(tmp_path / "work" / "shards" / "x"),
                                 text=str(tmp_path / "work" / "text" / "y.h5"))
    summary.write_text(json.dumps(done))
    legacy = run.with_name(run.name[:-10] + "0123456789").name
    (moved / "runs" / run.name).rename(moved / "runs" / legacy)

    def no_training(*a, **k):
        raise AssertionError("a moved working directory trained again")

    monkeypatch.setattr(fit, "run", no_training)
    out = experiments.run_a(_cfg(demo_data, tmp_path, splits=1, work=str(moved)))
    assert [p.name for p in (moved / "runs").iterdir()] == [legacy]
    scored = json.loads((Path(out["reports"][0]) / "report.json").read_text())
    assert Path(scored["provenance"]["run"]).name == legacy


def test_members_score_each_split_with_its_fits_averaged(demo_data, tmp_path):
    """--members K fits each split K times (seeds --seed upwards, each a run reused like any)
    and scores their average, the run `ecgshard ensemble` writes."""
    from ecgshard.run import Run

    cfg = _cfg(demo_data, tmp_path, splits=1, members=2)
    out = experiments.run_a(cfg)
    scored = json.loads((Path(out["reports"][0]) / "report.json").read_text())
    averaged = Run.load(scored["provenance"]["run"])
    assert [m["seed"] for m in averaged.ck["ensemble"]] == [0, 1]
    fits = sorted(p for p in (tmp_path / "work" / "runs").iterdir()
                  if (p / "summary.json").exists())
    assert len(fits) == 2
    seed0 = [f for f in fits if json.loads((f / "config.json").read_text())["config"]["seed"] == 0]
    assert averaged.dir.name == f"{seed0[0].name}-x2"      # named by its first member
    assert {m["run"] for m in averaged.ck["ensemble"]} == {str(f.resolve()) for f in fits}
    assert "each run the average of 2 fits (seeds 0 to 1, `ecgshard ensemble`)" in \
        (tmp_path / "results.md").read_text()


def _spy_everywhere(monkeypatch, name, spy):
    """Replace ``data.NAME`` and every module's imported copy of it."""
    from ecgshard import embed, zeroshot

    for module in (data, embed, experiments, fit, zeroshot):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, spy)


def test_holdout_choice_never_reads_the_test_fold_and_keeps_most_training_records(
        demo_data, tmp_path, monkeypatch):
    read = []
    original = data.count_selection

    def spy(sel):
        read.append(tuple(sel.folds))
        return original(sel)

    _spy_everywhere(monkeypatch, "count_selection", spy)
    shard_dir = demo_data / "s-ptbxl"
    manifest = shards.load_manifest(shard_dir)
    cfg = _cfg(demo_data, tmp_path, splits=6, holdout_size=2, max_excluded=0.2)
    train_folds = cfg.fit.train_folds
    splits = experiments.holdout_splits(cfg, shard_dir, manifest)
    assert read and all(10 not in folds for folds in read)
    assert len(splits) >= 3
    n_train, _, _ = original(data.Selection(str(shard_dir), train_folds, ()))
    for split in splits[1:]:                               # the random ones (0 is the default)
        # the drawn codes, as fit is asked for them: fit closes them once (closing a closed
        # list again would follow a class taken along for a shared name as if asked for)
        assert len(split) == cfg.holdout_size
        closed = concepts.resolve_holdout(split, manifest["classes"], expand=True)
        assert "SR" not in closed and "NORM" not in closed  # far over the cap
        _, dropped, _ = original(data.Selection(str(shard_dir), train_folds, (),
                                                tuple(closed)))
        assert dropped / n_train <= 0.2


def test_split_seed_draws_the_splits_apart_from_the_fit_seed(demo_data, tmp_path):
    """--split-seed fixes the draw, so that other fit seeds train on the same splits; without it
    the fit's seed draws them (the draws published before the option)."""
    shard_dir = demo_data / "s-ptbxl"
    manifest = shards.load_manifest(shard_dir)
    cfg = _cfg(demo_data, tmp_path, splits=4, holdout_size=2, max_excluded=0.2)

    def draw(seed, split_seed=None):
        return experiments.holdout_splits(
            replace(cfg, fit=replace(cfg.fit, seed=seed), split_seed=split_seed), shard_dir,
            manifest)

    seed0, seed1 = draw(0), draw(1)
    assert seed0 != seed1                   # the random splits differ between fit seeds
    assert draw(1, split_seed=0) == seed0
    assert draw(0, split_seed=1) == seed1


def test_scoring_on_validation_never_reads_the_test_fold(demo_data, tmp_path, monkeypatch):
    """--score val chooses a recipe: held-out classes are scored on the validation fold and no
    stage (holdout choice, fit, scoring) reads a test-fold record."""
    read = []
    original = data.load_selection

    def spy(sel, *a, **kw):
        read.append(tuple(sel.folds))
        return original(sel, *a, **kw)

    _spy_everywhere(monkeypatch, "load_selection", spy)
    out = experiments.run_a(_cfg(demo_data, tmp_path, splits=1, score="val"))
    scored = json.loads((tmp_path / "work" / "experiment-a-tiny-test.json").read_text())
    report = json.loads((Path(out["reports"][0]) / "report.json")
                        .read_text())
    assert report["provenance"]["folds"] == [9] and out["reports"][0].endswith("-val")
    assert read and all(10 not in folds for folds in read)
    assert scored["unseen_macro_auroc"] == out["unseen_macro_auroc"]
    assert "validation fold 9 (reporting only; scored here to choose a recipe" in \
        (tmp_path / "results.md").read_text()


def test_experiment_c_places_statement_trained_concepts_as_seen(demo_data, tmp_path):
    from ecgshard import synth

    synth.write_mimic_iv_ecg(tmp_path / "mimic", n_records=150, seed=4)
    cfg = _cfg(demo_data, tmp_path, mimic=str(tmp_path / "mimic"), cinc=str(demo_data / "cinc"),
               min_count=3, label="tiny c", command="bin/experiment-c tiny")
    out = experiments.run_c(cfg)
    text = (tmp_path / "results.md").read_text()
    assert "## Experiment C: MIMIC-IV-ECG model scored on PTB-XL — tiny c" in text
    assert "## Experiment C: MIMIC-IV-ECG model scored on Challenge 2021 databases" in text
    assert "Per statement kind" in text and "| rhythm |" in text
    ptbxl = json.loads((Path(out["reports"][0]) / "report.json")
                       .read_text())
    group = {c["code"]: (c["group"], c["via"]) for c in ptbxl["classes"]}
    # the machine's "Sinus bradycardia" statement was trained: SBRAD is seen, through it
    assert group["SBRAD"] == ("seen", "sinus bradycardia")
    assert group["1AVB"][0] == "seen"                    # "1st degree A-V block"
    # "Inferior infarct age undetermined" names the inferior infarct in the machines' words
    assert group["IMI"] == ("related", "inferior infarct age undetermined")


@pytest.mark.parametrize("setting", sorted(fit.BEFORE_RECORDED))
def test_settings_added_since_leave_older_runs_reusable_and_resumable(setting, demo_data,
                                                                      demo_text, tmp_path):
    """A run trained before a setting existed did what its BEFORE_RECORDED value does (no
    findings sigmoid, no random start): its key is the same, a resume with that value goes
    on, and one with another value is refused."""
    before = FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                       out=str(tmp_path / "r"), **fit.BEFORE_RECORDED)
    old, other = fit.BEFORE_RECORDED[setting], fit.BEFORE_RECORDED[setting] + 1.0
    now = replace(before, **{setting: other})
    key = experiments.run_key(before)["config"]
    assert not set(fit.BEFORE_RECORDED) & set(key)
    assert experiments.run_key(now)["config"] == {**key, setting: other}
    stored = {k: v for k, v in asdict(before).items() if k not in fit.BEFORE_RECORDED}
    fit._check_same_config(tmp_path, stored, before, at_epoch=3)
    with pytest.raises(ECGShardError, match=f"{setting}: {old!r} vs {other!r}"):
        fit._check_same_config(tmp_path, stored, now, at_epoch=3)
