"""``ecgshard fit``: train the ECG encoder against the fixed text matrix (Experiment A).

Held-out classes are removed from the label space, and every record carrying one is removed
from training and validation (strict zero-shot), unless the user loudly asks otherwise. The run
directory is self-describing: config, class lists, exclusion counts, the held-out check,
a JSONL log per epoch, and checkpoints (best by validation macro AUROC on the training
classes, and last), all written atomically; ``--resume`` continues from the last one exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import concepts, distributed, findings, shards
from .config import FitConfig
from .data import (Preloaded, Selection, StreamLoader, augment, count_selection, fits_in_memory,
                   load_selection, selection_bytes)
from .device import autocast, resolve_device
from .losses import FindingsSigmoidLoss, build_loss
from .metrics import macro, per_class
from .models import EncoderConfig, ZeroShotModel
from .errors import ECGShardError
from .run import checkpoint_path
from .signal import SignalPath, amplitude_scale

log = logging.getLogger(__name__)


def resolve_holdout(cfg, classes):
    """The run's closed holdout, ``{code: reason}``: ``cfg.holdout`` ('default' = the package's PTB-XL holdout,
    where present) closed over every class of the vocabulary, whatever its count: a relative
    below ``--min-positives`` is no training class, but its records would still be trained on
    as negatives, and the closure must pass through it."""
    codes = list(cfg.holdout)
    if codes == ["default"]:
        codes = concepts.default_holdout(c["code"] for c in classes)
    if not codes:
        return {}
    return concepts.close_holdout(codes, classes, expand=cfg.holdout_expand)


@dataclass(frozen=True)
class Plan:
    """What a run trains on, checked before any training starts (``plan``)."""
    manifest: dict                      # the first shard set's; every set shares its path
    sets: list                          # per shard set: path, fingerprints, sources, counts
    text: object                        # the shards.TextMatrix
    holdout: list                       # closed, sorted
    riders: list                        # held out for a shared name, not kept unseen
    watch: list                         # codes the held-out check counts in batches
    train_sel: list                     # one data.Selection per shard set
    val_sel: list
    train_codes: list
    finding_codes: list                 # measured-finding targets (fit --findings), or []
    finding_positives: dict
    findings_withheld: dict             # statement -> why: it restates a held-out concept
    n_train: int
    n_val: int
    excluded: dict                      # records dropped for held-out labels: train, val
    dropped_rare: list                  # below --min-positives


def plan(cfg):
    """Classes, selections and counts of a run, checked before any training starts.

    Over several shard sets the classes are the union of their codes, each in its own code
    system; the holdout is closed over that union through the relation table (holding out
    SBRAD holds out SNOMED 426177001 too, and the records carrying either, in every set); a
    class's labels in a set come from that set's codes of the same concept. Selections, counts
    and records are per set (``train_sel``/``val_sel`` are lists, one per ``cfg.shards``)."""
    manifests = [shards.load_manifest(d) for d in cfg.shards]
    _check_distinct_sets(cfg.shards, manifests)
    _check_same_signal_path(cfg.shards, manifests)
    _check_folds(cfg, manifests)
    text = shards.read_text_matrix(cfg.text)
    classes = list({c["code"]: c for m in reversed(manifests) for c in m["classes"]}.values())
    every = tuple(dict.fromkeys(c for m in manifests for c in shards.class_codes(m)))
    reasons = resolve_holdout(cfg, classes)
    holdout, riders = sorted(reasons), sorted(concepts.riders(reasons))
    # A held-out concept's codes in every set, trainable or not, take their records out.
    exclude = () if cfg.include_heldout_records else _with_synonyms(holdout, every)
    watch = heldout_watch(holdout, riders, every)
    if cfg.include_heldout_records and holdout:
        log.warning("!!! --include-heldout-records: records carrying held-out labels ARE TRAINED "
                    "ON (only the label columns are removed). Results are NOT strict zero-shot.")
    of_kind = _of_kinds(classes, cfg.train_kinds)
    candidates = tuple(c for c in every if c not in set(holdout) and c in of_kind)
    by_set, positives = _count(_selections(cfg.shards, manifests, cfg.train_folds, candidates,
                                           exclude, watch))
    n_train, n_excluded = map(sum, zip(*by_set))
    train_codes = tuple(c for c, n in zip(candidates, positives) if n >= cfg.min_positives)
    if not train_codes or n_train == 0:
        best = sorted(zip(positives.tolist(), candidates), reverse=True)[:5]
        raise ECGShardError(
            f"empty training set: {n_train} records in train folds {list(cfg.train_folds)} "
            f"({n_excluded} more excluded for carrying held-out labels {holdout or '-'}), and "
            f"{len(train_codes)} of {len(candidates)} candidate classes have >= "
            f"{cfg.min_positives} positives there (most: "
            f"{', '.join(f'{c} {n}' for n, c in best) or 'none'}). Hold out fewer classes, "
            f"lower --min-positives, or name more --train-folds")
    _check_text_covers(cfg, text, train_codes, dict(zip(candidates, positives)))
    finding_codes, finding_positives, withheld = _trainable_findings(
        cfg, manifests, train_codes, exclude, watch, text, holdout, riders)
    missing_text = [c for c in holdout if c not in set(text.codes)]
    if missing_text:
        log.warning("held-out classes without a text embedding cannot be scored later: %s",
                    missing_text)
    train_sel = _selections(cfg.shards, manifests, cfg.train_folds, train_codes, exclude, watch,
                            finding_codes)
    val_sel = _selections(cfg.shards, manifests, cfg.val_folds, train_codes, exclude, watch,
                          finding_codes)
    val_by_set, _ = _count(val_sel)
    n_val, n_val_excluded = map(sum, zip(*val_by_set))
    sets = [{"shards": str(Path(d).resolve()), "fingerprint": m["fingerprint"],
             "dataset_fingerprint": m.get("dataset_fingerprint"), "sources": sorted(m["sources"]),
             "records": {"train": t[0], "val": v[0]},
             "records_excluded_for_heldout_labels": {"train": t[1], "val": v[1]}}
            for d, m, t, v in zip(cfg.shards, manifests, by_set, val_by_set)]
    return Plan(manifest=manifests[0], sets=sets, text=text, holdout=holdout, riders=riders,
                watch=list(watch), train_sel=train_sel, val_sel=val_sel,
                train_codes=list(train_codes), finding_codes=list(finding_codes),
                finding_positives=finding_positives, findings_withheld=withheld,
                n_train=n_train, n_val=n_val,
                excluded={"train": n_excluded, "val": n_val_excluded},
                dropped_rare=[c for c, n in zip(candidates, positives)
                              if n < cfg.min_positives])


def _trainable_findings(cfg, manifests, train_codes, exclude, watch, text, holdout, riders):
    """With ``--findings``: the finding statements with at least ``--min-positives`` training
    records (measured on the records that train, held-out ones excluded), their counts, and
    the statements withheld because what they restate is a held-out class or its relative."""
    if not cfg.findings:
        return (), {}, {}
    withheld = findings_withheld(holdout, riders)
    every = tuple(f.code for f in findings.FINDINGS)
    _, positives = _count(_selections(cfg.shards, manifests, cfg.train_folds, train_codes,
                                      exclude, watch, every))
    counts = dict(zip(every, positives[len(train_codes):].tolist()))
    kept = tuple(c for c in every if counts[c] >= cfg.min_positives and c not in withheld)
    for code, why in withheld.items():
        log.info("finding %r withheld: %s", findings.BY_CODE[code].text, why)
    text.finding_rows(kept)                     # refused here if the matrix lacks them
    return kept, counts, withheld


def findings_withheld(holdout, riders=()):
    """``{statement code: why}`` for each finding statement that restates a concept the same
    as, or related to, a class kept unseen or a part of one ("frontal QRS axis pointing left"
    is left axis deviation, near LAFB: trained, it would make a held-out LAFB or LAFB/LPFB
    *related*, not unseen), and for the other statements about that quantity."""
    graph = concepts.load()
    kept_unseen = [h for h in holdout if h not in set(riders)]
    kept_unseen += [c for h in kept_unseen for c, (kind, _) in graph.related(h).items()
                    if kind == "child"]
    out = {}
    for f in findings.FINDINGS:
        for code in f.states:
            st = graph.status(code, kept_unseen) if graph.known(code) else None
            if st is not None and st.group != "unseen":
                tie = graph.explain(code, st.via) or "the same concept"
                relation = "the same as" if st.group == "seen" else "related to"
                out[f.code] = f"it restates {code}, {relation} held-out {st.via} ({tie})"
                break
    # The rest of a withheld statement's quantity goes too: trained alone, "axis between -30
    # and +90 degrees" is the nearest text to a held-out fascicular block's and scores it
    # backwards (docs/findings.md)
    first = {}
    for code in out:
        first.setdefault(findings.BY_CODE[code].quantity, code)
    for f in findings.FINDINGS:
        if f.code not in out and f.quantity in first:
            out[f.code] = (f"it reads {f.quantity}, as withheld {first[f.quantity]} does: "
                           f"trained without it, its text would stand for the whole quantity")
    return out


def heldout_watch(holdout, riders, vocabulary):
    """The codes the held-out check watches for in training batches: every code of
    ``vocabulary`` that is not *unseen* against the held-out classes kept unseen (all but the
    ``riders``, taken along for a shared name) by the relation table's pairwise status — the
    same concept, a relative, a finding one's text names. Computed apart from the closure that
    chose what to exclude, so a closure that missed a relative is caught, not confirmed."""
    if not holdout:
        return ()
    graph = concepts.load()
    kept_unseen = [h for h in holdout if h not in set(riders)]
    return tuple(sorted(set(holdout) | {c for c in vocabulary
                                        if graph.status(c, kept_unseen).group != "unseen"}))


def _with_synonyms(holdout, vocabulary):
    """The held-out codes and every code of ``vocabulary`` naming the same concept."""
    graph = concepts.load()
    held = {graph.concept(c) for c in holdout}
    return tuple(sorted({c for c in vocabulary if graph.concept(c) in held} | set(holdout)))


def _selections(shard_dirs, manifests, folds, codes, exclude=(), watch=(), finding_codes=()):
    """One Selection per shard set; records carrying an ``exclude`` code are dropped, and
    those carrying a ``watch`` code counted per batch (the held-out check). Each class takes,
    in each set, every code of that set naming its concept (by the relation table; its own
    code among them), and is negative throughout a set that has none: two codes of one concept
    in one set (the Challenge's 59118001 and 713427006) label the same records, never each
    other's negatives."""
    graph = concepts.load()
    sels = []
    for d, m in zip(shard_dirs, manifests):
        present = shards.class_codes(m)
        sources = tuple(tuple(p for p in present if graph.concept(p) == graph.concept(c))
                        for c in codes)
        own = all(s == (c,) for s, c in zip(sources, codes))
        sels.append(Selection(str(d), tuple(folds), tuple(codes), tuple(exclude), tuple(watch),
                              None if own else sources, tuple(finding_codes)))
    return sels


def _count(sels):
    """[(kept, excluded)] per selection, and positives per class summed over them."""
    by_set, positives = [], np.zeros(len(sels[0].columns), np.int64)
    for sel in sels:
        kept, excluded, pos = count_selection(sel)
        by_set.append((kept, excluded))
        positives += pos
    return by_set, positives


def _check_distinct_sets(shard_dirs, manifests):
    """One shard set named twice (another spelling of its path, a copy) would train every
    record twice; sets are told apart by content, not by path."""
    first = {}
    for d, m in zip(shard_dirs, manifests):
        key = m.get("dataset_fingerprint") or m["fingerprint"]
        if key in first:
            raise ECGShardError(f"--shards {first[key]} and {d} hold the same records "
                                f"(dataset fingerprint {key[:12]}): name each set once")
        first[key] = d


def _check_folds(cfg, manifests):
    """Every named fold must hold records in the shards, before any minute is spent training:
    an absent validation fold would choose checkpoints on nothing, an absent test fold leave
    nothing to judge the run on."""
    present = sorted({int(f) for m in manifests for f, n in m["folds"].items() if n})
    for role, folds in (("train", cfg.train_folds), ("validation", cfg.val_folds),
                        ("test", cfg.test_folds)):
        absent = [f for f in folds if f not in present]
        where = f"{', '.join(map(str, cfg.shards))} (folds present: {present})"
        if len(absent) == len(folds):
            flag = "val" if role == "validation" else role
            raise ECGShardError(f"{role} folds {absent} hold no records in {where}; name folds "
                                f"it has with --{flag}-folds")
        if absent:
            log.warning("%s folds %s hold no records in %s", role, absent, where)


def _check_same_signal_path(shard_dirs, manifests):
    """Shard sets trained together must share one signal path; the message names both sides."""
    first = SignalPath.of(manifests[0])
    for d, m in zip(shard_dirs[1:], manifests[1:]):
        diffs = first.differences(SignalPath.of(m))
        if diffs:
            raise ECGShardError(f"{d} was built with another signal path than {shard_dirs[0]} "
                                f"({shard_dirs[0]} vs {d}: {'; '.join(diffs)}); rebuild one "
                                f"of them with the other's --fs/--band/--notch/--normalize")


def _of_kinds(classes, kinds):
    """Codes whose statement kind (PTB-XL: diagnostic, form, rhythm) is one of ``kinds``."""
    if not kinds:
        return {c["code"] for c in classes}
    present = {k for c in classes for k in c.get("kind") or ()}
    if not set(kinds) <= present:
        raise ECGShardError(f"--train-kinds {','.join(kinds)}: these shards' classes are of "
                            f"kinds {sorted(present) or 'none recorded'}")
    return {c["code"] for c in classes if set(c.get("kind") or ()) & set(kinds)}


def _check_text_covers(cfg, text, train_codes, positives):
    """Every training class needs a text embedding; the message names the ways that work."""
    missing = [c for c in train_codes if c not in set(text.codes)]
    if not missing:
        return
    counts = {c: int(positives[c]) for c in missing}
    raise ECGShardError(
        f"the text matrix {cfg.text} has no embedding for {len(missing)} training classes "
        f"(code: training positives) {counts}. embed-text leaves out codes that have no name, "
        f"so rerunning it alone cannot help. Either name them — rebuild with `build --dx-map` "
        f"and a table that lists them (e.g. the Challenge's dx_mapping_scored.csv,"
        f"dx_mapping_unscored.csv), or add `embed-text --vocab CODES.csv` with columns "
        f"code,name for them — or leave them out of training with `--min-positives "
        f"{max(counts.values()) + 1}` (drops every class with fewer positives) or "
        f"`--holdout {','.join(missing)}`.")


def run(cfg: FitConfig):
    """Train; returns the summary dict also written to ``RUN_DIR/summary.json``. Under torchrun
    every rank runs this; rank 0 alone locks and writes the run directory."""
    import contextlib

    world, device = distributed.init(resolve_device(cfg.device))
    out = Path(cfg.out)
    try:
        with shards.exclusive_lock(out, "fit") if world.main else contextlib.nullcontext():
            return _train(cfg, out, world, device)
    finally:
        distributed.shutdown(world)


def _train(cfg, out, world, device):
    if checkpoint_path(out, "last").exists() and not cfg.resume:
        raise ECGShardError(f"{out} already holds a run; pass --resume to continue it or choose "
                            f"another --out")
    if cfg.batch_size % world.size:
        raise ECGShardError(f"--batch-size {cfg.batch_size} is the global batch: it must split "
                            f"evenly over {world.size} processes")
    p = plan(cfg)
    if p.n_train < cfg.batch_size:
        # Full batches only (a 3-record tail would skew BatchNorm and the contrastive loss), so
        # a training set smaller than one batch becomes one batch rather than no step at all.
        log.warning("only %d training records, fewer than --batch-size %d: one batch of %d per "
                    "epoch", p.n_train, cfg.batch_size, p.n_train)
        cfg = replace(cfg, batch_size=p.n_train // world.size * world.size)
    torch.manual_seed(cfg.seed)
    t = Trainer(cfg, p, device, world)
    local_batch = cfg.batch_size // world.size
    use_preload = cfg.data == "preload" or (cfg.data == "auto" and fits_in_memory(
        selection_bytes(p.n_train, p.manifest["n_samples"]), device))
    train = Preloaded(p.train_sel, local_batch, device, cfg.seed, world, cfg.shard_weights) \
        if use_preload else StreamLoader(p.train_sel, local_batch, device, cfg.seed,
                                         cfg.workers, world, cfg.shard_weights)
    val_parts = [load_selection(sel) for sel in p.val_sel]
    val = {k: np.concatenate([part[k] for part in val_parts]) for k in val_parts[0]}
    # the classes' columns choose checkpoints and thresholds; the findings' are logged
    val["labels"], val["findings"] = np.split(val["labels"], [len(p.train_codes)], axis=1)
    val_set = np.repeat(np.arange(len(val_parts)), [len(part["labels"]) for part in val_parts])
    if cfg.resume and checkpoint_path(out, "last").exists():
        ck = shards.load_checkpoint(checkpoint_path(out, "last"), map_location=device)
        if "ensemble" in ck:
            raise ECGShardError(f"{out} holds runs averaged by `ecgshard ensemble`, not a fit "
                                f"to resume; give a new --out")
        if ck["text_sha256"] != p.text.sha256 or ck["train_codes"] != p.train_codes:
            raise ECGShardError(f"{out} was trained against another text matrix or class list; "
                                f"resume it with the same --text and holdout, or use a new --out")
        _check_same_config(out, ck["config"], cfg, ck["state"]["epoch"])
        before = shards.read_run_info(out)
        now = [s["fingerprint"] for s in p.sets]
        if before.shards_fingerprint != now:
            diffs = SignalPath.from_dict(before.signal_path).differences(
                SignalPath.of(p.manifest))
            if before.records["train"] != p.n_train:
                diffs.append(f"training records: {before.records['train']} vs "
                             f"{p.n_train}")
            raise ECGShardError(
                f"{out} was trained on other shards than {', '.join(cfg.shards)} (fingerprints "
                f"{', '.join(f[:12] for f in before.shards_fingerprint)} vs "
                f"{', '.join(f[:12] for f in now)}; run vs now: "
                f"{'; '.join(diffs) or 'same signal path and counts, other shard bytes'}). "
                f"Resume with the shards it was trained on, or use a new --out")
        t.restore(ck)
        _trim_log(out / "log.jsonl", t.state["epoch"])
        log.info("resuming %s at epoch %d", out, t.state["epoch"])
    elif world.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_files(out, cfg, p, t.encoder_cfg, use_preload,
                         amplitude_scale(val["signal"], val["length"]))

    log.info("training %s/%s on %s x %d: %d records, %d classes, held out %s (%d train records "
             "excluded)", cfg.arch, cfg.loss, device, world.size, p.n_train,
             len(p.train_codes), p.holdout, p.excluded["train"])
    epochs = EpochLog(out, cfg.log) if world.main else None
    for epoch in range(t.state["epoch"], cfg.epochs):
        record = t.train_epoch(train, epoch)
        val_auroc, val_emb = evaluate(t.model.encoder, val, device, cfg.amp,
                                      t.model.class_emb().detach(), world)
        record["val_macro_auroc"] = val_auroc       # over the classes: what chooses "best"
        if p.finding_codes:
            record["val_findings_macro_auroc"] = _macro_of(
                val_emb, val["findings"], t.model.class_emb().detach()[len(p.train_codes):])
        if len(p.sets) > 1:
            record["val_macro_auroc_by_set"] = _macro_by_set(
                val_emb, val["labels"], val_set, t.model.class_emb().detach(), cfg.shards)
        t.state["epoch"] = epoch + 1
        is_best = val_auroc > t.state["best_auroc"] or not checkpoint_path(out, "best").exists()
        if is_best:
            t.state["best_auroc"] = val_auroc if val_auroc == val_auroc else -1.0
        log.info("epoch %d: loss %.4f, val macro AUROC %.4f (train classes, folds %s), "
                 "%.0f samples/s, data wait %.0f%%", epoch + 1, record["loss"], val_auroc,
                 cfg.val_folds, record["samples_per_s"], 100 * record["data_wait_fraction"])
        if world.main:
            epochs.write(record)
            ck = t.checkpoint(val_auroc, {"emb": val_emb, "labels": val["labels"]})
            if is_best:
                shards.save_checkpoint(checkpoint_path(out, "best"), ck)
            shards.save_checkpoint(checkpoint_path(out, "last"), ck)
            _write_heldout_check(out, t.state, p, cfg.include_heldout_records)
        distributed.barrier(world)
        if cfg.max_steps and t.state["step"] >= cfg.max_steps:
            break
    if world.main:
        epochs.close()
    if t.state["step"] == 0:
        raise ECGShardError(f"no training step was taken ({p.n_train} training records, "
                            f"batch size {cfg.batch_size}); nothing in {out} is a trained model")
    summary = {"run": str(out), "best_val_macro_auroc": t.state["best_auroc"],
               "val_folds": list(cfg.val_folds), "train_classes": p.train_codes,
               "holdout": p.holdout, "text_model": p.text.attrs.get("model_id"),
               "epochs_done": t.state["epoch"], "steps": t.state["step"],
               "data_path": "preload" if use_preload else "stream", "processes": world.size}
    if world.main:
        shards.write_json(out / "summary.json", summary)
    return summary


class EpochLog:
    """Each epoch's record appended to ``RUN/log.jsonl`` (and, with ``--log tensorboard``, as
    scalars in ``RUN/tensorboard``); ``close`` draws ``RUN/learning_curve.png`` from the whole
    log, resumed epochs included."""

    def __init__(self, out, kind):
        self.out, self.board = Path(out), None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ECGShardError("--log tensorboard needs the tensorboard package (pip "
                                    "install tensorboard, or ecgshard[tensorboard])") from None
            self.board = SummaryWriter(str(self.out / "tensorboard"))

    def write(self, record):
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.board.add_scalar(key, value, record["epoch"])
            self.board.flush()

    def close(self):
        if self.board is not None:
            self.board.close()
        from .report import learning_curve

        learning_curve(self.out / "log.jsonl", self.out / "learning_curve.png")


class Trainer:
    """Model, loss, optimiser, schedule and progress (``state``: what a checkpoint resumes)
    of one run, and one epoch of training."""
    def __init__(self, cfg, p, device, world):
        self.cfg, self.p, self.device, self.world = cfg, p, device, world
        self.state = {"epoch": 0, "step": 0, "best_auroc": -1.0, "heldout_seen": 0,
                      "records_seen": 0, "batches": 0}
        # (C + F, D) numpy: the classes' rows, then the measured findings' (if trained)
        self.text_rows = p.text.emb[p.text.rows(p.train_codes)]
        if p.finding_codes:
            self.text_rows = np.concatenate([self.text_rows,
                                             p.text.finding_rows(p.finding_codes)])
        self.encoder_cfg = EncoderConfig(arch=cfg.arch, n_samples=p.manifest["n_samples"],
                                         text_dim=int(self.text_rows.shape[1]), width=cfg.width)
        self.model = distributed.sync_batch_norm(
            ZeroShotModel(self.encoder_cfg, torch.from_numpy(self.text_rows),
                          learn_class_emb=cfg.learn_class_embeddings), world).to(device)
        if cfg.learn_class_embeddings:
            log.warning("--learn-class-embeddings: a supervised reference run; it cannot score "
                        "unseen classes and zeroshot refuses it")
        self.loss_fn = build_loss(cfg.loss)
        if p.finding_codes and cfg.findings_sigmoid:
            self.loss_fn = FindingsSigmoidLoss(self.loss_fn, len(p.train_codes),
                                               cfg.findings_sigmoid)
        # A parameter the loss never reads gets no gradient, and data-parallel training would
        # wait for it forever (its gradients would never be averaged).
        self.model.logit_scale.requires_grad_(self.loss_fn.uses_scale)
        self.model.logit_bias.requires_grad_(self.loss_fn.uses_bias)
        self.opt = torch.optim.AdamW(self.model.param_groups(cfg.weight_decay), lr=cfg.lr)
        # Global steps: the same on every rank, and the same schedule for any world size.
        self.steps_per_epoch = max(1, p.n_train // cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        warm = max(1, int(cfg.warmup * total))

        def lr_factor(step):                   # linear warm-up, then cosine decay to zero
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor)
        forward = self.model
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(
                self.model, device_ids=[device] if torch.device(device).type == "cuda" else None)
        self.forward = torch.compile(forward) if cfg.compile else forward

    def train_epoch(self, train, epoch):
        """One epoch of ``steps_per_epoch`` global batches; updates ``self.state``, returns the
        epoch's log."""
        from tqdm.auto import tqdm

        cfg, world, state = self.cfg, self.world, self.state
        self.model.train()
        gen = torch.Generator(device=self.device).manual_seed(
            cfg.seed * 7919 + epoch + 104729 * world.rank)
        t0, waited, n_seen, heldout, losses, norms = time.perf_counter(), 0.0, 0, 0, [], []
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=None if world.main else True, leave=False)
        batches = iter(train.epoch(epoch, self.steps_per_epoch))
        while not (cfg.max_steps and state["step"] >= cfg.max_steps):
            tw = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - tw
            if batch is None:
                break
            x, length = batch["signal"].float(), batch["length"]
            if cfg.augment:
                x, length = augment(x, length, gen, lead_dropout=cfg.lead_dropout,
                                    crop=round(cfg.crop * self.p.manifest["fs"]))
            with autocast(self.device, cfg.amp):
                emb, class_emb, scale, bias = self.forward(x, length)
            # The loss sees the global batch: every rank's embeddings (gradient to its own).
            loss = self.loss_fn(distributed.gather_with_grad(emb, world), class_emb,
                                distributed.gather(batch["labels"], world), scale, bias)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                  cfg.grad_clip)))
            self.opt.step()
            self.sched.step()
            state["step"] += 1
            state["batches"] += 1
            n_seen += len(x) * world.size
            heldout += int(batch["heldout"].sum())
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}",
                            rec_s=f"{n_seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        state["records_seen"] += n_seen
        state["heldout_seen"] += distributed.total(heldout, world)
        elapsed = time.perf_counter() - t0
        return {"epoch": epoch + 1, "step": state["step"],
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "grad_norm": float(np.mean(norms)) if norms else None,
                "clipped_share": float(np.mean(np.asarray(norms) > cfg.grad_clip))
                if norms else None,
                "samples_per_s": n_seen / elapsed if elapsed else 0.0,
                "data_wait_fraction": waited / elapsed if elapsed else 0.0,
                "lr": self.sched.get_last_lr()[0], "seconds": elapsed,
                "logit_scale": float(self.model.scale().detach()), "processes": world.size,
                # a CPU fit repeats exactly at one thread count; another count can change it
                "threads": torch.get_num_threads()}

    def checkpoint(self, val_auroc, validation):
        p, learned = self.p, self.model.learned_class_emb
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "state": dict(self.state),
                "model_config": asdict(self.encoder_cfg), "loss_name": self.cfg.loss,
                "train_codes": p.train_codes, "finding_codes": p.finding_codes,
                "holdout": p.holdout,
                "text_sha256": p.text.sha256,
                "text_emb_train": self.text_rows,
                "learned_class_emb": None if learned is None else learned.detach().cpu().numpy(),
                "text_model": p.text.attrs.get("model_id"), "config": asdict(self.cfg),
                "val_macro_auroc": val_auroc, "validation": validation}

    def restore(self, ck):
        stored = asdict(type(self.encoder_cfg).from_dict(ck["model_config"]))
        differs = [f"{k}: {stored[k]!r} vs {v!r}" for k, v in asdict(self.encoder_cfg).items()
                   if stored[k] != v]
        if differs:
            raise ECGShardError(f"the checkpoint's encoder differs from this run's (checkpoint "
                                f"vs now: {'; '.join(differs)}); resume with the same options "
                                f"and shards, or use a new --out")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.state = dict(ck["state"])


def _trim_log(path, epochs_done):
    """Keep the log lines of the epochs the resumed checkpoint holds: a run killed after an
    epoch's line but before its checkpoint trains that epoch again, and a kill mid-write
    leaves half a line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs_done:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    with shards.atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


# What may change on --resume: where and how fast it runs, and when it stops. The shard sets
# and the text matrix are compared by content above, not by the paths given.
RESUME_MAY_CHANGE = ("resume", "device", "workers", "data", "compile", "max_steps", "shards",
                     "text", "out")
# Settings added since runs were first trained: what a run that does not record one did.
BEFORE_RECORDED = {"findings_sigmoid": 0.0, "crop": 0.0}


def _check_same_config(out, stored, cfg, at_epoch):
    """A resumed run trains on with the settings it started with, or the last and best
    checkpoints and config.json would describe different trainings. More --epochs extend it:
    the learning-rate schedule stretches from there on, which config.json records."""
    now = asdict(cfg)
    stored = {**BEFORE_RECORDED, **stored}
    differs = [f"{k}: {stored.get(k)!r} vs {now[k]!r}" for k in now
               if k not in RESUME_MAY_CHANGE + ("epochs",)
               and _plain(stored.get(k)) != _plain(now[k])]
    if cfg.epochs < stored["epochs"]:
        differs.append(f"epochs: {stored['epochs']} vs {cfg.epochs} (fewer)")
    if differs:
        raise ECGShardError(f"{out} was trained with other settings (run vs now: "
                            f"{'; '.join(differs)}); resume with the same options, or use a new "
                            f"--out")
    if cfg.epochs != stored["epochs"]:
        log.warning("extending %s from %d to %d epochs at epoch %d: the learning-rate schedule "
                    "stretches from here (recorded in config.json)", out, stored["epochs"],
                    cfg.epochs, at_epoch)
        recorded = shards.read_json(out / "config.json", "resume with a new --out")
        recorded.setdefault("extended", []).append(
            {"at_epoch": at_epoch, "epochs": [stored["epochs"], cfg.epochs]})
        recorded["config"]["epochs"] = cfg.epochs
        shards.write_json(out / "config.json", recorded)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _write_run_files(out, cfg, p, encoder_cfg, use_preload, input_lead_sd):
    shards.write_json(out / "config.json", {"config": asdict(cfg), "model": asdict(encoder_cfg),
                                            "data_path": "preload" if use_preload else "stream"})
    shards.write_run_info(out, shards.RunInfo(
        train_codes=p.train_codes, holdout=p.holdout,
        holdout_requested=list(cfg.holdout), dropped_rare_classes=p.dropped_rare,
        records={"train": p.n_train, "val": p.n_val},
        records_excluded_for_heldout_labels=p.excluded,
        shard_sets=p.sets, shard_weights=list(cfg.shard_weights),
        strict_zero_shot=not cfg.include_heldout_records,
        folds={"train": list(cfg.train_folds), "val": list(cfg.val_folds),
               "test": list(cfg.test_folds)},
        shards=[s["shards"] for s in p.sets],
        shards_fingerprint=[s["fingerprint"] for s in p.sets],
        dataset_fingerprint=[s["dataset_fingerprint"] for s in p.sets],
        shard_sources=sorted({src for s in p.sets for src in s["sources"]}),
        signal_path=SignalPath.of(p.manifest).to_dict(),
        text=str(Path(cfg.text).resolve()), text_sha256=p.text.sha256,
        text_model=p.text.attrs.get("model_id"),
        class_texts_sha256=_copy_text_side(out, cfg.text, p.text),
        finding_codes=p.finding_codes,
        finding_positives={c: p.finding_positives[c] for c in p.finding_codes},
        findings_withheld=p.findings_withheld,
        input_lead_sd=input_lead_sd))


def _copy_text_side(out, text_path, matrix):
    """Copy the text matrix and the class texts it was embedded with into the run; returns the
    class texts' hash. A class texts file edited since embed-text would embed new texts
    differently from the trained rows, so it is refused."""
    import shutil

    with shards.atomic_path(out / shards.RUN_TEXT) as tmp:
        shutil.copyfile(text_path, tmp)
        if shards.read_text_matrix(tmp).sha256 != matrix.sha256:
            raise ECGShardError(f"{text_path} was rewritten while the run started; start again")
    load = matrix.attrs.get("load") or {}
    source = load.get("class_texts")
    table = concepts.class_texts_bytes(source)
    digest = hashlib.sha256(table).hexdigest()
    embedded = load.get("class_texts_sha256")
    if embedded and embedded != digest:
        raise ECGShardError(
            f"the class texts {source or 'of this ecgshard package'} changed since {text_path} "
            f"was embedded (sha256 {embedded[:12]} then, {digest[:12]} now): new class texts "
            f"would be written differently from the trained rows. Rerun `ecgshard embed-text` "
            f"so both agree")
    with shards.atomic_path(out / shards.RUN_CLASS_TEXTS) as tmp:
        Path(tmp).write_bytes(table)
    return digest


def _write_heldout_check(out, state, p, allowed):
    ok = state["heldout_seen"] == 0 or allowed
    shards.write_json(out / "heldout_check.json", {
        "holdout": p.holdout, "held_out_alongside": p.riders, "watched_codes": p.watch,
        "watch_rule": "every code not unseen, by the relation table's pairwise status, against "
                      "the held-out classes kept unseen; computed apart from the closure",
        "batches": state["batches"], "records_seen": state["records_seen"],
        "records_with_heldout_label_seen": state["heldout_seen"], "passed": ok})
    if not ok:
        raise ECGShardError(f"{state['heldout_seen']} training records carried a held-out label; "
                            f"the run is not zero-shot (see {out / 'heldout_check.json'})")


def _macro_by_set(emb, labels, of_set, class_emb, names):
    """Validation macro AUROC of each shard set (its classes with positives there)."""
    return {name: _macro_of(emb[of_set == i], labels[of_set == i], class_emb)
            for i, name in enumerate(names) if (of_set == i).any()}


def _macro_of(emb, labels, rows):
    """Macro AUROC of cosine scores against the first ``labels.shape[1]`` of ``rows``."""
    rows = rows[:labels.shape[1]].float().cpu().numpy()
    return macro(per_class(emb @ rows.T, labels)[0])


def evaluate(encoder, val, device, amp, class_emb, world=None):
    """Validation macro AUROC over the training classes (cosine similarity as the score), and
    the validation embeddings (N, D) it came from. Under torchrun each rank embeds every
    world-size-th record and the embeddings are gathered, not recomputed."""
    world = world or distributed.World()
    mine = np.arange(len(val["labels"]))[world.rank::world.size]
    part = encoder.encode(val["signal"][mine], val["length"][mine], device=device, amp=amp)
    emb = np.zeros((len(val["labels"]), part.shape[1]), np.float32)
    for rank, rows in enumerate(distributed.gather_objects(part, world)):
        emb[rank::world.size] = rows
    if len(val["labels"]) == 0:
        return float("nan"), emb
    return _macro_of(emb, val["labels"], class_emb), emb
