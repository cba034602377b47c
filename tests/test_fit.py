import hashlib
import json

import h5py
import numpy as np
import pytest
import torch

from ecgshard import data, fit, shards
from ecgshard.distributed import World
from ecgshard.errors import ECGShardError
from ecgshard.signal import SignalPath


def test_short_fit_beats_chance_on_training_classes(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["best_val_macro_auroc"] > 0.75
    log = [json.loads(line) for line in (demo_run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 10 and log[-1]["loss"] < log[0]["loss"]
    assert (demo_run / "learning_curve.png").stat().st_size > 5000
    assert all(0 <= r["data_wait_fraction"] < 1 and r["samples_per_s"] > 0 for r in log)
    info = shards.read_run_info(demo_run)
    assert info.holdout == ["LVOLT"] and "LVOLT" not in info.train_codes
    assert info.records_excluded_for_heldout_labels["train"] > 0
    assert info.signal_path == SignalPath.of(shards.load_manifest(info.shards[0])).to_dict()
    check = json.loads((demo_run / "heldout_check.json").read_text())
    assert check["passed"] and check["records_with_heldout_label_seen"] == 0
    assert check["records_seen"] > 0
    ck = shards.load_checkpoint(demo_run / "checkpoint-best.pt")
    assert ck["holdout"] == ["LVOLT"] and ck["text_model"].startswith("sentence-transformers")


def _digest(sig):
    return hashlib.sha256(np.ascontiguousarray(sig, dtype=np.float16).tobytes()).hexdigest()


@pytest.mark.parametrize("path", ["stream", "preload"])
def test_heldout_records_never_reach_a_batch(demo_data, path):
    """Batches are matched back to shard records by their signal bytes, and the records' labels
    are read independently from the shard files."""
    shard_dir = demo_data / "s-ptbxl"
    manifest = shards.load_manifest(shard_dir)
    codes = shards.class_codes(manifest)
    by_digest = {}
    for p in shards.shard_paths(shard_dir, manifest):
        with h5py.File(p, "r") as f:
            sig, lab, fold = f["signal"][...], f["labels"][...], f["fold"][...]
        for i in range(len(sig)):
            by_digest[_digest(sig[i])] = (lab[i], fold[i])
    held = codes.index("CLBBB")
    train_codes = tuple(c for c in codes if c != "CLBBB")
    sel = data.Selection(str(shard_dir), (1, 2, 3, 4, 5, 6, 7, 8), train_codes, ("CLBBB",),
                         ("CLBBB",))
    loader = data.StreamLoader(sel, 32, "cpu", workers=2) if path == "stream" else \
        data.Preloaded(sel, 32, "cpu")
    seen = 0
    for batch in loader.epoch(0):
        assert batch["labels"].shape[1] == len(train_codes)
        for sig in batch["signal"].numpy():
            lab, fold = by_digest[_digest(sig)]
            assert lab[held] == 0 and 1 <= fold <= 8
            seen += 1
    n_train, n_excluded, _ = data.count_selection(sel)
    assert n_excluded > 0 and seen >= n_train - 32 and seen <= n_train


def test_stream_covers_every_record_once_per_epoch_in_a_new_order(demo_data):
    sel = data.Selection(str(demo_data / "s-ptbxl"), tuple(range(1, 11)), ("NORM",))
    stream = data.ShardStream(sel, batch_size=16, seed=3, drop_last=False, buffer_records=100)
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        orders.append([_digest(s) for b in stream for s in b["signal"].numpy()])
    assert len(orders[0]) == shards.load_manifest(demo_data / "s-ptbxl")["n_records"]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]
    assert len(set(orders[0])) == len(orders[0])


def test_resume_continues_to_the_same_state(demo_data, demo_text, tmp_path):
    common = dict(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), holdout=("LVOLT",),
                  epochs=2, batch_size=64, device="cpu", min_positives=3, seed=1)
    fit.run(fit.FitConfig(out=str(tmp_path / "full"), **common))
    steps = json.loads((tmp_path / "full" / "log.jsonl").read_text().splitlines()[0])["step"]
    fit.run(fit.FitConfig(out=str(tmp_path / "cut"), max_steps=steps, **common))
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["epochs_done"] == 1
    with pytest.raises(ECGShardError, match="--resume"):
        fit.run(fit.FitConfig(out=str(tmp_path / "cut"), **common))
    fit.run(fit.FitConfig(out=str(tmp_path / "cut"), resume=True, **common))
    a = shards.load_checkpoint(tmp_path / "full" / "checkpoint-last.pt")
    b = shards.load_checkpoint(tmp_path / "cut" / "checkpoint-last.pt")
    assert a["state"] == b["state"]
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    # resuming against another text matrix is refused, not silently mixed
    m = shards.read_text_matrix(demo_text)
    attrs = {k: v for k, v in m.attrs.items() if k not in ("schema_version", "content_sha256")}
    shards.write_text_matrix(tmp_path / "other.h5", m.emb, m.codes, [t + "." for t in m.texts],
                             m.names, attrs, (m.finding_codes, m.finding_texts, m.finding_emb))
    with pytest.raises(ECGShardError, match="another text matrix"):
        fit.run(fit.FitConfig(out=str(tmp_path / "cut"), resume=True,
                              **{**common, "text": str(tmp_path / "other.h5")}))
    # nor with other training settings (R10); where it runs may change
    for change, named in (({"lr": 1e-2}, "lr: 0.003 vs 0.01"), ({"loss": "bce"}, "loss: "),
                          ({"seed": 2}, "seed: 1 vs 2")):
        with pytest.raises(ECGShardError, match=f"other settings .*{named}"):
            fit.run(fit.FitConfig(out=str(tmp_path / "cut"), resume=True,
                                  **{**common, **change}))
    fit.run(fit.FitConfig(out=str(tmp_path / "cut"), resume=True, workers=0, data="stream",
                          **common))


def test_clear_errors(demo_data, demo_text, tmp_path):
    common = dict(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), device="cpu",
                  epochs=1)
    with pytest.raises(ECGShardError, match=r"train folds \[11\] hold no records .*folds "
                                            r"present: \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10\]"):
        fit.run(fit.FitConfig(out=str(tmp_path / "a"), train_folds=(11,), **common))
    with pytest.raises(ECGShardError, match=r"empty training set: .* 0 of \d+ candidate classes "
                                            r"have >= 100000 positives there \(most: SR \d+"):
        fit.run(fit.FitConfig(out=str(tmp_path / "a"), min_positives=100000, **common))
    with pytest.raises(ECGShardError, match=r"validation folds \[11\] .*--val-folds"):
        fit.run(fit.FitConfig(out=str(tmp_path / "a"), val_folds=(11,), **common))
    with pytest.raises(ECGShardError, match="same records"):
        fit.run(fit.FitConfig(out=str(tmp_path / "a"), **{
            **common, "shards": (str(demo_data / "s-ptbxl"), str(demo_data / "s-ptbxl") + "/")}))
    assert not (tmp_path / "a" / "checkpoint-last.pt").exists()
    with pytest.raises(ECGShardError, match="test folds never steer"):
        fit.run(fit.FitConfig(out=str(tmp_path / "b"), val_folds=(10,), **common))
    with pytest.raises(ECGShardError, match="not in the vocabulary"):
        fit.run(fit.FitConfig(out=str(tmp_path / "c"), holdout=("LBBB",), **common))
    # a text matrix that lacks training classes
    from ecgshard import text

    vocab = tmp_path / "v.csv"
    vocab.write_text("code,name\nNORM,normal ECG\n")
    small = text.run(text.TextConfig(vocab=(str(vocab),), out=str(tmp_path / "t.h5"),
                                     model="minilm-offline"))
    with pytest.raises(ECGShardError, match="has no embedding for"):
        fit.run(fit.FitConfig(out=str(tmp_path / "d"), **{**common, "text": str(small)}))


def test_supervised_reference_run_is_refused_by_zeroshot(demo_data, demo_text, tmp_path):
    from ecgshard import zeroshot

    out = tmp_path / "sup"
    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out=str(out),
                          holdout=("LVOLT",), epochs=1, max_steps=2, batch_size=32,
                          device="cpu", learn_class_embeddings=True))
    ck = shards.load_checkpoint(out / "checkpoint-last.pt")
    assert ck["learned_class_emb"].shape == ck["text_emb_train"].shape
    assert not np.allclose(ck["learned_class_emb"], ck["text_emb_train"])
    with pytest.raises(ECGShardError, match="supervised reference run .*not tied to text"):
        zeroshot.run(zeroshot.ZeroShotConfig(run=str(out), shards=str(demo_data / "s-ptbxl"),
                                             text=str(demo_text), out=str(tmp_path / "r")))


def test_weight_decay_only_on_weights_and_the_gradient_clipped(demo_data, demo_text,
                                                                tmp_path):
    cfg = fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                        out=str(tmp_path / "wd"), loss="bce", device="cpu", weight_decay=0.1,
                        grad_clip=1e-3, epochs=1, batch_size=64, min_positives=3,
                        log="tensorboard")
    trainer = fit.Trainer(cfg, fit.plan(cfg), "cpu", World())
    decay = {id(p): g["weight_decay"] for g in trainer.opt.param_groups for p in g["params"]}
    assert decay[id(trainer.model.logit_scale)] == 0.0
    assert decay[id(trainer.model.logit_bias)] == 0.0
    assert all(decay[id(p)] == (0.1 if p.ndim >= 2 else 0.0)
               for p in trainer.model.encoder.parameters())
    assert {0.0, 0.1} == {decay[id(p)] for p in trainer.model.encoder.parameters()}
    fit.run(cfg)
    record = json.loads((tmp_path / "wd" / "log.jsonl").read_text().splitlines()[0])
    assert record["grad_norm"] > 1e-3 and record["clipped_share"] == 1.0
    assert record["threads"] == torch.get_num_threads()     # what a CPU refit must match
    # --log tensorboard: the same figures as event scalars, per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "wd" / "tensorboard"))
    board.Reload()
    assert {"loss", "val_macro_auroc", "grad_norm"} <= set(board.Tags()["scalars"])
    (event,) = board.Scalars("loss")
    assert event.step == 1 and event.value == pytest.approx(record["loss"], rel=1e-5)


def test_heldout_statement_below_min_likelihood_still_excludes_its_record(tmp_path):
    """--min-likelihood 50 drops CLBBB at likelihood 20 from the labels, but a run holding out
    CLBBB must still never train on that record."""
    from conftest import write_ptbxl_tree
    from ecgshard import build

    def codes_of(k):
        if k % 4 == 0:
            return {"CLBBB": 20.0, "NORM": 100.0}          # a doubtful CLBBB
        return {"CLBBB": 100.0} if k % 4 == 1 else {"NORM": 100.0, "SBRAD": 80.0}

    write_ptbxl_tree(tmp_path / "raw", n=40, codes_of=codes_of)
    build.run(build.BuildConfig(source_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "s"),
                                format="ptbxl", min_likelihood=50, workers=1))
    manifest = shards.load_manifest(tmp_path / "s")
    assert {c["code"]: c["count"] for c in manifest["classes"]}["CLBBB"] == 10   # labels: k%4==1
    sel = data.Selection(str(tmp_path / "s"), tuple(range(1, 11)), ("NORM", "SBRAD"),
                         ("CLBBB",), ("CLBBB",))
    kept, excluded, _ = data.count_selection(sel)
    assert (kept, excluded) == (20, 20)                   # every record mentioning CLBBB
    loaded = data.load_selection(sel, with_ids=True)
    assert not any(int(r) % 4 in (0, 1) for r in loaded["record_id"])


def test_resume_refuses_another_shard_set(demo_data, demo_text, tmp_path):
    from ecgshard import build

    common = dict(text=str(demo_text), out=str(tmp_path / "r"), epochs=2, max_steps=1,
                  batch_size=32, device="cpu", min_positives=2)
    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), **common))
    other = tmp_path / "rebuilt"
    build.run(build.BuildConfig(source_dir=str(demo_data / "ptbxl"), out_dir=str(other),
                                shard_size=128, workers=1))
    with pytest.raises(ECGShardError, match="fingerprint"):
        fit.run(fit.FitConfig(shards=str(other), resume=True, **common))


def test_recipe_options_reach_the_model_and_the_batches(demo_data, demo_text, tmp_path,
                                                       monkeypatch):
    """--width scales the encoder, --lead-dropout and --crop reach the augmentation,
    --train-kinds keeps only classes of those statement kinds."""
    from ecgshard.models import ZeroShotModel

    seen = []
    original = fit.augment

    def spy(x, length, generator, **kw):
        seen.append((kw.get("lead_dropout"), kw.get("crop")))
        return original(x, length, generator, **kw)

    monkeypatch.setattr(fit, "augment", spy)
    out = tmp_path / "r"
    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out=str(out),
                          epochs=1, batch_size=64, device="cpu", min_positives=3, max_steps=2,
                          width=0.5, lead_dropout=0.3, crop=1.5, train_kinds=("rhythm",)))
    ck = shards.load_checkpoint(out / "checkpoint-last.pt")
    model = ZeroShotModel.from_checkpoint(ck)
    assert ck["model_config"]["width"] == 0.5 and model.encoder.backbone.out_dim == 2 * 128
    assert seen == [(0.3, 150), (0.3, 150)]                    # seconds at the shards' 100 Hz
    manifest = shards.load_manifest(demo_data / "s-ptbxl")
    kinds = {c["code"]: c["kind"] for c in manifest["classes"]}
    assert ck["train_codes"] and all(kinds[c] == ["rhythm"] for c in ck["train_codes"])
    with pytest.raises(ECGShardError, match="kinds"):
        fit.plan(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out="x",
                               train_kinds=("morphology",)))


def test_lead_dropout_zeroes_whole_leads_at_its_rate():
    x = torch.ones(2000, 12, 50)
    y, _ = data.augment(x, torch.full((2000,), 50), torch.Generator().manual_seed(0),
                        scale=0.0, noise=0.0, lead_dropout=0.3)
    zeroed = (y.abs().sum(-1) == 0).float()
    assert torch.all((y == 0) | (y == 1))                      # whole leads, nothing partial
    assert abs(zeroed.mean().item() - 0.3) < 0.01


def test_random_start_moves_each_record_forward_and_shortens_it():
    """Each record loses 0 to crop samples (at most half of it) off its front; the rest moves
    to the start, the freed tail is zero, and the length says where the record now ends."""
    t, crop = 100, 30
    length = torch.tensor([100] * 300 + [40] * 100)
    x = torch.arange(1.0, t + 1).repeat(400, 12, 1) * (torch.arange(t) < length[:, None])[:, None]
    y, cut_length = data.augment(x, length, torch.Generator().manual_seed(0), scale=0.0,
                                 noise=0.0, lead_dropout=0.0, crop=crop)
    cut = length - cut_length
    assert cut.min() == 0 and cut[:300].max() == crop and cut[300:].max() == 20
    assert len(set(cut[:300].tolist())) > 20                   # starts spread over the range
    for i in range(400):
        n = int(cut_length[i])
        assert torch.equal(y[i, :, :n], x[i, :, int(cut[i]):int(length[i])])
        assert not y[i, :, n:].any()
    same, same_length = data.augment(x, length, torch.Generator().manual_seed(0), scale=0.0,
                                     noise=0.0, lead_dropout=0.0)
    assert torch.equal(same, x) and torch.equal(same_length, length)


def _train_records_carrying(shard_dir, folds, codes):
    sel = data.Selection(str(shard_dir), tuple(folds), ("SR",), tuple(codes))
    return data.count_selection(sel)[1]


def test_the_holdout_closes_over_relatives_below_min_positives(demo_data, demo_text):
    """IRBBB (29 training records) is below --min-positives 35, so it is no training class;
    holding out CRBBB must still hold it out and exclude its records (near CRBBB)."""
    shard_dir = demo_data / "s-ptbxl"
    cfg = fit.FitConfig(shards=str(shard_dir), text=str(demo_text), out="x", device="cpu",
                        holdout=("CRBBB",), holdout_expand=True, min_positives=35)
    p = fit.plan(cfg)
    assert p.holdout == ["CRBBB", "IRBBB"] and "IRBBB" not in p.train_codes
    assert p.excluded["train"] == _train_records_carrying(shard_dir, cfg.train_folds,
                                                             ["CRBBB", "IRBBB"])
    assert {"CRBBB", "IRBBB"} <= set(p.watch)


def test_the_heldout_check_watches_relatives_the_closure_missed(demo_data, demo_text, tmp_path,
                                                                 monkeypatch):
    """The check is computed apart from the closure: a closure that forgets IRBBB (near CRBBB)
    trains on IRBBB records, and the check says so instead of confirming the exclusion."""
    from ecgshard import concepts

    monkeypatch.setattr(concepts, "close_holdout", lambda codes, classes, expand=False:
                        {c: None for c in codes})
    cfg = fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                        out=str(tmp_path / "run"), device="cpu", holdout=("CRBBB",),
                        min_positives=2, epochs=1, max_steps=3, batch_size=64)
    assert "IRBBB" in fit.plan(cfg).watch
    with pytest.raises(ECGShardError, match="carried a held-out label"):
        fit.run(cfg)


def test_tensorboard_logging_without_its_package_is_refused_before_training(tmp_path,
                                                                            monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    with pytest.raises(ECGShardError, match="pip install tensorboard"):
        fit.EpochLog(tmp_path, "tensorboard")
