"""``ecgshard embed``: a trained run's embeddings of a shard set's records, with their ids,
patients, folds, sources and labels — for retrieval, clustering, plots and linear probes."""
from __future__ import annotations

import logging
from pathlib import Path

from . import shards, signal
from .config import EmbedConfig
from .data import Selection, load_selection
from .device import resolve_device
from .run import Run

log = logging.getLogger(__name__)


def run(cfg: EmbedConfig):
    """Embed; returns the path written."""
    records = RunRecords(Run.load(cfg.run, cfg.checkpoint), cfg.shards, cfg.folds, cfg.leads,
                         cfg.allow_signal_mismatch)
    emb = records.embed(cfg.device)
    shards.write_embeddings(cfg.out, emb, records.data, records.codes, records.provenance())
    log.info("wrote %s: %d records x %d dims", cfg.out, *emb.shape)
    return Path(cfg.out)


class RunRecords:
    """A run (``Run``) and the records of a shard set it embeds: those in ``folds`` (all when
    None), with only ``leads`` present when given; the set must have the run's signal path
    unless ``allow_signal_mismatch``."""
    def __init__(self, run, shard_dir, folds=None, leads=(), allow_signal_mismatch=False):

        self.run = run
        self.shard_dir, self.leads = Path(shard_dir), tuple(leads)
        self.manifest = shards.load_manifest(shard_dir)
        signal.require_same(run.info, self.manifest, shard_dir, allow_signal_mismatch)
        self.codes = shards.class_codes(self.manifest)
        self.data = load_selection(Selection(str(shard_dir), tuple(folds or range(1, 11)),
                                             tuple(self.codes)), with_ids=True)
        if self.leads:
            shards.keep_leads(self.data["signal"], self.leads)

    def embed(self, device="auto", seed=None):
        """(N, D) embeddings by the run's encoder, or with ``seed`` by an untrained encoder of
        the same architecture (the random baseline)."""
        device = resolve_device(device)
        encoder = self.run.encoder(device) if seed is None else self.run.untrained(seed, device)
        return encoder.encode(self.data["signal"], self.data["length"], device=device)

    def provenance(self, seed=None):
        return {"run": str(self.run.dir.resolve()), "checkpoint": self.run.checkpoint,
                "encoder": "trained" if seed is None else f"untrained, seed {seed}",
                "shards": str(self.shard_dir.resolve()),
                "shards_fingerprint": self.manifest["fingerprint"],
                "folds": sorted({int(f) for f in self.data["fold"]}),
                "leads": list(self.leads) or list(shards.LEADS),
                "text_model": self.run.info.text_model}
