import numpy as np
import pytest

from ecgshard import ZeroShotClassifier, ensemble, export, fit, shards, zeroshot
from ecgshard.config import EnsembleConfig, ExportConfig, FitConfig, ZeroShotConfig
from ecgshard.errors import ECGShardError
from ecgshard.models import EncoderEnsemble
from ecgshard.run import Run, checkpoint_path


def _fit(demo_data, demo_text, out, seed, holdout=("LVOLT",)):
    """A short fit of the demo run's recipe (its holdout, classes and folds), another seed."""
    fit.run(FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out=str(out),
                      holdout=holdout, epochs=1, max_steps=3, batch_size=64, device="cpu",
                      min_positives=3, seed=seed))
    return out


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_fits_averaged_are_one_run_that_every_stage_reads(demo_data, demo_text, demo_run,
                                                          tmp_path):
    other = _fit(demo_data, demo_text, tmp_path / "seed1", seed=1)
    out = ensemble.run(EnsembleConfig(runs=(str(demo_run), str(other)), out=str(tmp_path / "e")))
    members = [Run.load(demo_run), Run.load(other)]
    both = Run.load(out)
    assert both.holdout == members[0].holdout and both.train_codes == members[0].train_codes
    assert [m["seed"] for m in both.ck["ensemble"]] == [0, 1]

    # its encoder is the members' unit embeddings averaged and renormalised
    signals = np.random.default_rng(0).normal(0, 0.3, (5, 12, 1000)).astype(np.float32)
    embs = [m.encoder().encode(signals, amp=False) for m in members]
    np.testing.assert_allclose(both.encoder().encode(signals, amp=False),
                               _unit(embs[0] + embs[1]), atol=1e-5)
    assert not np.allclose(embs[0], embs[1], atol=1e-3)          # two different fits
    # so are the validation embeddings zeroshot's thresholds are chosen on
    val = [m.ck["validation"]["emb"] for m in members]
    np.testing.assert_allclose(both.ck["validation"]["emb"], _unit(val[0] + val[1]), atol=1e-5)
    # the untrained control is as many untrained members
    control = both.untrained(3)
    assert isinstance(control, EncoderEnsemble) and len(control.members) == 2

    report = zeroshot.run(ZeroShotConfig(run=str(out), shards=str(demo_data / "s-ptbxl"),
                                         text="", out=str(tmp_path / "z"), bootstrap=10,
                                         control_seeds=2, permutations=10, device="cpu"))
    assert "LVOLT" in [c["code"] for c in report["classes"] if c["group"] == "unseen"]
    assert [m["run"] for m in report["provenance"]["ensemble"]] == \
        [str(demo_run.resolve()), str(other.resolve())]

    # exported and loaded back, it scores as the run does
    model = export.run(ExportConfig(run=str(out), out=str(tmp_path / "model")))
    classes = ["atrial fibrillation", "NORM"]
    from_run = ZeroShotClassifier.from_run(out, device="cpu").predict(signals, 100, classes)
    exported = ZeroShotClassifier.from_pretrained(model, device="cpu").predict(signals, 100,
                                                                               classes)
    np.testing.assert_allclose(exported.to_numpy(), from_run.to_numpy(), atol=1e-6)

    with pytest.raises(ECGShardError, match="ecgshard ensemble"):
        fit.run(FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out=str(out),
                          holdout=("LVOLT",), epochs=1, batch_size=64, device="cpu",
                          min_positives=3, resume=True))


def test_a_run_from_before_the_members_field_is_averaged(demo_data, demo_text, demo_run,
                                                         tmp_path):
    other = _fit(demo_data, demo_text, tmp_path / "old", seed=1)
    for which in ("best", "last"):             # as fit wrote it before EncoderConfig.members
        path = checkpoint_path(other, which)
        ck = shards.load_checkpoint(path)
        del ck["model_config"]["members"]
        shards.save_checkpoint(path, ck)
    out = ensemble.run(EnsembleConfig(runs=(str(demo_run), str(other)), out=str(tmp_path / "e")))
    assert len(Run.load(out).encoder().members) == 2


def test_runs_of_another_holdout_are_refused(demo_data, demo_text, demo_run, tmp_path):
    other = _fit(demo_data, demo_text, tmp_path / "pvc", seed=1, holdout=("PVC",))
    with pytest.raises(ECGShardError, match=r"holdout: \['LVOLT'\].*vs \['PVC'\]"):
        ensemble.run(EnsembleConfig(runs=(str(demo_run), str(other)), out=str(tmp_path / "e")))
    assert not (tmp_path / "e").exists()
    with pytest.raises(ECGShardError, match="at least two runs"):
        EnsembleConfig(runs=(str(demo_run),), out=str(tmp_path / "e"))
