"""``ZeroShotClassifier``: a trained run, ready to score ECGs against any words.

    from ecgshard import ZeroShotClassifier
    clf = ZeroShotClassifier.from_run("runs/a", device="auto")
    clf.predict(signals, fs=500, classes=["atrial fibrillation", "left bundle branch block"])

Signals go through the run's own signal path (rate, length, band, notch, normalisation, read
from its run record) by the function ``build`` uses, so a record scored here equals the same
record read from a shard. Class texts are embedded by the run's text model with its pooling,
templates and text mode, so a class the run never saw lands where ``embed-text`` would put it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from . import concepts, shards, text
from .config import BuildConfig
from .errors import ECGShardError

log = logging.getLogger(__name__)


class ZeroShotClassifier:
    def __init__(self, model, info, text_attrs, loss, device="cpu", flat_leads="skip"):
        self.model, self.info, self.loss, self.device = model.eval(), info, loss, device
        self.text_attrs = text_attrs
        self.signal_cfg = BuildConfig.from_signal_path(info.signal_path, flat_leads=flat_leads)
        self._text_encoder = None
        self._text_cache = {}
        self._class_texts = None

    @classmethod
    def from_run(cls, run, device="auto", checkpoint="best", flat_leads="skip"):
        """Load ``RUN/checkpoint-{checkpoint}.pt`` with its run record and text settings."""
        from .device import resolve_device
        from .models import ZeroShotModel

        run = Path(run)
        info = shards.read_run_info(run)
        ck = shards.load_checkpoint(run / f"checkpoint-{checkpoint}.pt", map_location="cpu")
        if ck.get("learned_class_emb") is not None:
            raise ECGShardError(f"{run} is a supervised reference run (learned class vectors): "
                                f"it cannot score classes by their text")
        try:
            attrs = shards.read_text_matrix(info.text).attrs
        except ECGShardError as exc:
            raise ECGShardError(f"the run's text matrix is needed to embed new class texts the "
                                f"way it was trained ({exc})") from None
        if "load" not in attrs:
            raise ECGShardError(f"{info.text} predates the record of how it was embedded; "
                                f"rerun `ecgshard embed-text` with the same options (its "
                                f"embeddings do not change)")
        device = resolve_device(device)
        model = ZeroShotModel.from_checkpoint(ck).to(device)
        return cls(model, info, attrs, ck["loss_name"], device, flat_leads)

    # ------------------------------------------------------------ ECG side

    def prepare(self, signal, fs, leads=shards.LEADS, where=""):
        """One raw record ``(L, T)`` in millivolts (leads named by ``leads``) through the run's
        signal path: ``(float16 (12, T), valid length)``; raises ``BadRecordError``."""
        from .build import process_signal

        x, length, _ = process_signal(np.asarray(signal, dtype=np.float32), fs, list(leads),
                                      self.signal_cfg, where)
        return x, length

    def encode_ecg(self, signals, fs, leads=shards.LEADS, keep_leads=None, batch_size=256):
        """(N, D) unit embeddings of raw records: ``signals`` an (N, L, T) array or a list of
        (L, T) arrays in millivolts at ``fs`` Hz. ``keep_leads``: score with only these present
        (the others zeroed)."""
        prepared = [self.prepare(s, fs, leads) for s in signals]
        if not prepared:
            return np.zeros((0, self.model.encoder.config.text_dim), np.float32)
        x = np.stack([p[0] for p in prepared])
        length = np.asarray([p[1] for p in prepared], dtype=np.int64)
        return self.encode_prepared(x, length, keep_leads, batch_size)

    def encode_prepared(self, x, length, keep_leads=None, batch_size=256):
        """(N, D) embeddings of records already on the run's signal path (as shards hold them)."""
        if keep_leads:
            x = shards.keep_leads(np.array(x), keep_leads)
        return self.model.encoder.encode(x, length, batch_size=batch_size, device=self.device)

    # ------------------------------------------------------------ text side

    def encode_text(self, texts):
        """(C, D) unit rows for class texts, as the run's text matrix would hold them."""
        texts = list(texts)
        todo = [t for t in dict.fromkeys(texts) if self._key(t) not in self._text_cache]
        if todo:
            groups = text.class_texts([{"code": t, "name": t} for t in todo],
                                      self.text_attrs["text_mode"],
                                      self.text_attrs["templates"], self._table())
            for t, row in zip(todo, text.embed_classes(self._encoder(), groups)):
                self._text_cache[self._key(t)] = row
        if not texts:
            return np.zeros((0, self.model.encoder.config.text_dim), np.float32)
        return np.stack([self._text_cache[self._key(t)] for t in texts])

    def _table(self):
        if self._class_texts is None:
            self._class_texts = text.load_class_texts(self.text_attrs["load"]["class_texts"])
        return self._class_texts

    def _key(self, t):
        return hashlib.sha256(t.encode()).hexdigest()

    def _encoder(self):
        if self._text_encoder is None:
            load = self.text_attrs["load"]
            self._text_encoder = text.load_encoder(load["model"], load["pooling"], self.device)
            if self._text_encoder.revision != self.text_attrs["model_revision"] and \
                    self.text_attrs["model_revision"] != "unknown":
                raise ECGShardError(
                    f"the text model loaded now ({load['model']}, revision "
                    f"{self._text_encoder.revision}) is not the one the run was trained against "
                    f"(revision {self.text_attrs['model_revision']}): its embeddings would not "
                    f"be comparable")
        return self._text_encoder

    # ------------------------------------------------------------ scores

    def scores(self, emb, classes):
        """(N, C) cosine scores of embeddings against class texts."""
        return emb @ self.encode_text(classes).T

    def probabilities(self, cosines):
        """Calibrated probabilities where the run's loss makes them (the sigmoid loss: scale
        and bias were trained for exactly this), else None."""
        if self.loss != "bce":
            return None
        import torch

        scale = float(self.model.scale().detach())
        bias = float(self.model.logit_bias.detach())
        return torch.sigmoid(torch.from_numpy(scale * cosines + bias)).numpy()

    def class_status(self, classes):
        """Per class: seen / related / unseen for this run by the relation table (the class
        matched by code, by a synonym, or by the names its words contain; "related via CODE"
        names the trained one), or 'not in the relation table' for words that name nothing
        known."""
        graph = concepts.load()
        table = self._table()           # the run's own class texts may name more
        out = []
        for c in classes:
            code = table.code(c) or c
            if not graph.known(code):
                out.append("not in the relation table")
                continue
            st = graph.status(code, self.info.train_codes)
            out.append(st.group if st.via in (None, code) else f"{st.group} via {st.via}")
        return out

    def predict(self, signals, fs, classes, leads=shards.LEADS, keep_leads=None):
        """A pandas DataFrame of cosine scores: one row per record, one column per class."""
        import pandas as pd

        emb = self.encode_ecg(signals, fs, leads, keep_leads)
        return pd.DataFrame(self.scores(emb, classes), columns=list(classes))

