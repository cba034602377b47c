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

import numpy as np

from . import concepts, shards, text
from .device import resolve_device
from .run import Run
from .scoring import Scorer
from .signal import SignalPath, amplitude_scale, check_scale
from .errors import BadRecordError, ECGShardError

log = logging.getLogger(__name__)


class ZeroShotClassifier:
    def __init__(self, run, device="cpu", flat_leads="skip"):
        """``run``: a loaded ``Run``; its text side is checked here (``Run.text_matrix``)."""
        run.refuse_learned_classes()
        matrix = run.text_matrix()
        self.run, self.device = run, device
        self.model = run.model(device).eval()
        self.text_attrs = matrix.attrs
        self.signal_path = SignalPath.from_dict(run.info.signal_path)
        self.flat_leads = flat_leads
        self._class_texts = run.class_texts(matrix)
        self._text_encoder = None
        self._text_cache = {}

    @classmethod
    def from_run(cls, run_dir, device="auto", checkpoint="best", flat_leads="skip"):
        """Load ``RUN/checkpoint-{checkpoint}.pt`` with its run record and text side (the run's
        own copies, checked against the hashes it recorded)."""
        return cls(Run.load(run_dir, checkpoint), resolve_device(device), flat_leads)

    # ------------------------------------------------------------ ECG side

    def prepare(self, signal, fs, leads=shards.LEADS, where=""):
        """One raw record ``(L, T)`` (or ``(T, L)``) in millivolts, leads named by ``leads``,
        through the run's signal path: ``(float16 (12, T), valid length)``; raises
        ``BadRecordError``."""
        leads = _names(leads, "leads")
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim == 2 and x.shape[0] != len(leads) and x.shape[1] == len(leads):
            x = x.T                                  # (T, leads), as many tools store it
        if x.ndim != 2 or x.shape[0] != len(leads):
            raise BadRecordError("missing_lead", f"{where or 'record'}: signal of shape "
                                 f"{x.shape}, {len(leads)} lead names; expected "
                                 f"({len(leads)}, samples)")
        x, length, _ = self.signal_path.process(x, fs, leads, where, self.flat_leads)
        return x, length

    def encode_ecg(self, signals, fs, leads=shards.LEADS, keep_leads=None, batch_size=256):
        """(N, D) unit embeddings of raw records: ``signals`` an (N, L, T) array or a list of
        (L, T) arrays in millivolts at ``fs`` Hz. ``keep_leads``: score with only these present
        (the others zeroed)."""
        if isinstance(signals, np.ndarray) and signals.ndim != 3:
            raise ECGShardError(f"signals of shape {signals.shape}: give a list of (leads, "
                                f"samples) records or an (N, leads, samples) array (one "
                                f"record: [signal])")
        prepared = [self.prepare(s, fs, leads, f"record {i}") for i, s in enumerate(signals)]
        if not prepared:
            return np.zeros((0, self.model.encoder.config.text_dim), np.float32)
        x = np.stack([p[0] for p in prepared])
        length = np.asarray([p[1] for p in prepared], dtype=np.int64)
        return self.encode_prepared(x, length, keep_leads, batch_size)

    def encode_prepared(self, x, length, keep_leads=None, batch_size=256):
        """(N, D) embeddings of records already on the run's signal path (as shards hold them)."""
        check_scale(self.run.info.input_lead_sd, amplitude_scale(x, length), "the records given")
        if keep_leads:
            x = shards.keep_leads(np.array(x), keep_leads)
        return self.model.encoder.encode(x, length, batch_size=batch_size, device=self.device)

    # ------------------------------------------------------------ text side

    def encode_text(self, texts):
        """(C, D) unit rows for class texts, as the run's text matrix would hold them."""
        rows = self._embedded("row", texts)
        if not rows:
            return np.zeros((0, self.model.encoder.config.text_dim), np.float32)
        return np.stack(rows)

    def encode_sentences(self, texts):
        """Each class text's reading sentences as (k, D) unit rows, as the run's text matrix
        would hold them (``text.reading_sentences``): what ``scoring="findings"`` reads."""
        return self._embedded("sentences", texts)

    def _embedded(self, kind, texts):
        texts = _names(texts, "classes")
        todo = [t for t in dict.fromkeys(texts) if (kind, self._key(t)) not in self._text_cache]
        if todo:
            classes = [{"code": t, "name": t} for t in todo]
            mode, templates = self.text_attrs["text_mode"], self.text_attrs["templates"]
            if kind == "row":
                groups = text.class_texts(classes, mode, templates, self._class_texts,
                                         free_text=True)
                values = list(text.embed_classes(self._encoder(), groups))
            else:
                values = text.embed_sentences(self._encoder(), text.reading_sentences(
                    classes, mode, templates, self._class_texts))
            self._text_cache.update({(kind, self._key(t)): v for t, v in zip(todo, values)})
        return [self._text_cache[(kind, self._key(t))] for t in texts]

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

    def scores(self, emb, classes, scoring="cosine"):
        """(N, C) scores of embeddings against class texts: cosines (what ``probabilities``
        reads), or another rule of ``zeroshot --scoring`` (``scoring.Scorer``)."""
        rows = self.encode_text(classes)
        score = Scorer(scoring, self.run.text_rows, self.run.text_rows, self.run.finding_rows)
        sentences = self.encode_sentences(classes) if score.reads(len(rows)).any() else None
        return score(emb, rows, sentences=sentences)

    def probabilities(self, cosines):
        """Calibrated probabilities where the run's loss makes them (the sigmoid loss: scale
        and bias were trained for exactly this), else None."""
        if not self.run.loss.calibrated:
            return None
        import torch

        scale = float(self.model.scale().detach())
        bias = float(self.model.logit_bias.detach())
        return torch.sigmoid(torch.from_numpy(scale * cosines + bias)).numpy()

    def class_status(self, classes):
        """A pandas DataFrame, one row per class as given: the ``code`` it names (a code, a
        name or a synonym of the class texts; None for other words, placed by the names they
        contain), its ``status`` for this run
        (seen / related / unseen by the relation table, or 'not in the relation table' for
        words that name nothing known), the trained code or finding statement it is seen or
        related ``via``, and ``why``. ``label`` reads "related via CODE"."""
        import pandas as pd

        classes = _names(classes, "classes")
        graph = concepts.load()
        table = self._class_texts       # the run's own class texts may name more
        codes = [table.code(c) or c for c in classes]
        statuses = self.run.statuses(sorted({c for c in codes if graph.known(c)}))
        rows = []
        for c, code in zip(classes, codes):
            if code not in statuses:
                rows.append((None, "not in the relation table", None, "no code, synonym or "
                             "known name in these words"))
                continue
            st = statuses[code]
            via = None if st.via in (None, code) else st.via
            rows.append((table.code(c), st.group, via, st.why))
        labels = [status if via is None else f"{status} via {via}" for _, status, via, _ in rows]
        return pd.DataFrame([(*row, label) for row, label in zip(rows, labels)],
                            columns=["code", "status", "via", "why", "label"],
                            index=pd.Index(classes, name="class"))

    def predict(self, signals, fs, classes, leads=shards.LEADS, keep_leads=None, ids=None):
        """A pandas DataFrame of cosine scores: one row per record (indexed by ``ids``, e.g.
        record names, else 0..N-1, named "record"), one column per class."""
        import pandas as pd

        classes = _names(classes, "classes")
        n = len(signals)
        if ids is not None and len(ids) != n:
            raise ECGShardError(f"{len(ids)} ids for {n} records: give one id per record")
        emb = self.encode_ecg(signals, fs, leads, keep_leads)
        index = pd.Index(list(ids) if ids is not None else range(n), name="record")
        return pd.DataFrame(self.scores(emb, classes), columns=list(classes), index=index)

    @classmethod
    def from_pretrained(cls, name_or_path, device="auto", revision=None, flat_leads="skip"):
        """A model ``ecgshard export`` wrote: a local directory, or a Hugging Face Hub
        repository id (``owner/name``, at ``revision``) holding one; every file is checked
        against the hashes it was exported with (``ecgshard.export``)."""
        from .export import load_run

        return cls(load_run(name_or_path, revision), resolve_device(device), flat_leads)

def _names(values, what):
    """A list of strings from a list-like; one string would be iterated letter by letter."""
    if isinstance(values, str):
        raise ECGShardError(f"{what} must be a list of strings, got the string {values!r} "
                            f"(write [{values!r}])")
    values = list(values)
    bad = [v for v in values if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ECGShardError(f"{what} must be non-empty strings, got {bad[:5]}")
    return values
