"""``ecgshard embed``: a trained run's embeddings of a shard set's records, with their ids,
patients, folds, sources and labels — for retrieval, clustering, plots and linear probes."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import shards
from .config import EmbedConfig

log = logging.getLogger(__name__)


def run(cfg: EmbedConfig):
    """Embed; returns the path written."""
    records = RunRecords(cfg.run, cfg.shards, cfg.folds, cfg.checkpoint, cfg.leads, cfg)
    emb = records.embed(cfg.device)
    write_embeddings(cfg.out, emb, records.data, records.codes, records.provenance())
    log.info("wrote %s: %d records x %d dims", cfg.out, *emb.shape)
    return Path(cfg.out)


class RunRecords:
    """A run and the records of a shard set it embeds: those in ``folds`` (all when None),
    with only ``leads`` present when given. ``checks`` carries ``shards`` and
    ``allow_signal_mismatch`` for the signal-path check against the run's training shards."""

    def __init__(self, run_dir, shard_dir, folds=None, checkpoint="best", leads=(),
                 checks=None):
        from .data import Selection, load_selection
        from .zeroshot import check_signal_path

        self.run_dir, self.shard_dir = Path(run_dir), Path(shard_dir)
        self.checkpoint, self.leads = checkpoint, tuple(leads)
        self.info = shards.read_run_info(self.run_dir)
        self.ck = shards.load_checkpoint(self.run_dir / f"checkpoint-{checkpoint}.pt",
                                         map_location="cpu")
        self.manifest = shards.load_manifest(shard_dir)
        check_signal_path(self.info, self.manifest, checks)
        self.codes = shards.class_codes(self.manifest)
        self.data = load_selection(Selection(str(shard_dir), tuple(folds or range(1, 11)),
                                             tuple(self.codes)), with_ids=True)
        if self.leads:
            shards.keep_leads(self.data["signal"], self.leads)

    def embed(self, device="auto", seed=None):
        """(N, D) embeddings by the run's encoder, or with ``seed`` by an untrained encoder of
        the same architecture (the random baseline)."""
        import torch

        from .device import resolve_device
        from .models import ECGEncoder, EncoderConfig, ZeroShotModel

        device = resolve_device(device)
        if seed is None:
            encoder = ZeroShotModel.from_checkpoint(self.ck).encoder
        else:
            torch.manual_seed(seed)
            encoder = ECGEncoder(EncoderConfig(**self.ck["model_config"]))
        return encoder.to(device).encode(self.data["signal"], self.data["length"],
                                         device=device)

    def provenance(self, seed=None):
        return {"run": str(self.run_dir.resolve()), "checkpoint": self.checkpoint,
                "encoder": "trained" if seed is None else f"untrained, seed {seed}",
                "shards": str(self.shard_dir.resolve()),
                "shards_fingerprint": self.manifest["fingerprint"],
                "folds": sorted({int(f) for f in self.data["fold"]}),
                "leads": list(self.leads) or list(shards.LEADS),
                "text_model": self.info.text_model}


def write_embeddings(path, emb, data, codes, provenance):
    """One HDF5 file: ``emb`` (N, D) float32 and, per record, its id, patient, source, fold and
    labels (N, C) over ``codes``; the provenance as a JSON attribute."""
    import h5py

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with shards.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("emb", data=np.asarray(emb, dtype=np.float32))
            for key in (shards.RECORD_ID, shards.PATIENT_ID, shards.SOURCE):
                f.create_dataset(key, data=np.asarray(data[key]).astype(object),
                                 dtype=h5py.string_dtype())
            f.create_dataset(shards.FOLD, data=np.asarray(data["fold"], dtype=np.int16))
            f.create_dataset(shards.LABELS, data=np.asarray(data["labels"], dtype=np.uint8))
            f.create_dataset("codes", data=np.asarray(list(codes), dtype=object),
                             dtype=h5py.string_dtype())
            f.attrs["provenance"] = json.dumps(provenance)
