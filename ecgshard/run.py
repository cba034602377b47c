"""A trained run directory, read in one place: its record (``run.json``), one of its
checkpoints, and its own copy of the text side (``text.h5``, ``class_texts.json``), each checked
against what ``fit`` recorded. ``zeroshot``, ``embed``, ``probe``, ``predict`` and the Python
API read runs only through ``Run``.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import concepts, findings, shards
from .errors import ECGShardError
from .losses import LOSSES
from .models import EncoderConfig, ZeroShotModel, build_encoder

def checkpoint_path(run_dir, which):
    """``RUN/checkpoint-{best,last}.pt``: the best by validation macro AUROC, and the latest."""
    return Path(run_dir) / f"checkpoint-{which}.pt"


@dataclass(frozen=True)
class Run:
    dir: Path
    info: shards.RunInfo
    checkpoint: str                     # which one: best or last
    ck: dict                            # its contents (see the shards module docstring)

    @classmethod
    def load(cls, run_dir, checkpoint="best"):
        """A run directory ``fit`` wrote, or a model directory ``ecgshard export`` wrote (its
        one checkpoint, whichever is asked)."""
        from . import export

        run_dir = Path(run_dir)
        if export.is_export(run_dir) and not checkpoint_path(run_dir, checkpoint).exists():
            return export.load_run(run_dir)
        info = shards.read_run_info(run_dir)
        ck = shards.load_checkpoint(checkpoint_path(run_dir, checkpoint), map_location="cpu")
        return cls(run_dir, info, checkpoint, ck)

    @property
    def path(self):
        return checkpoint_path(self.dir, self.checkpoint)

    @property
    def train_codes(self):
        return list(self.info.train_codes)

    @property
    def holdout(self):
        return list(self.info.holdout)

    @property
    def text_rows(self):
        """(C, D) the text rows the run trained against, one per ``train_codes``."""
        return np.asarray(self.ck["text_emb_train"])[:len(self.train_codes)]

    @functools.cached_property
    def train_sentences(self):
        """Each training class's reading sentences (``TextMatrix.sentences``) from the run's
        text matrix, for scoring its own classes through the statements."""
        return self.text_matrix().sentences(self.train_codes)

    @property
    def finding_codes(self):
        """The measured-finding statements trained as targets (``fit --findings``), or []."""
        return list(self.ck.get("finding_codes") or [])

    def statuses(self, targets):
        """Each target's seen/related/unseen status against what the run trained: its classes
        and what its finding statements restate (``findings.statuses``)."""
        return findings.statuses(targets, self.train_codes, self.finding_codes)

    @property
    def finding_rows(self):
        """(F, D) their text rows, one per ``finding_codes``."""
        return np.asarray(self.ck["text_emb_train"])[len(self.train_codes):]

    @property
    def loss(self):
        """The loss class the run trained with (``calibrated`` says what its scores are)."""
        return LOSSES[self.ck["loss_name"]]

    def refuse_learned_classes(self):
        """A supervised reference (``--learn-class-embeddings``) has no tie from a class to its
        text, so nothing can be scored by text with it."""
        if self.ck.get("learned_class_emb") is not None:
            raise ECGShardError(f"{self.dir} is a supervised reference run (learned class "
                                f"vectors, --learn-class-embeddings): its classes are not tied "
                                f"to text, so it cannot score classes by their text")

    def model(self, device="cpu"):
        return ZeroShotModel.from_checkpoint(self.ck).to(device)

    def encoder(self, device="cpu"):
        return self.model(device).encoder

    def untrained(self, seed, device="cpu"):
        """An encoder of the run's architecture (as many members as it averages) at its
        seeded initialisation: the random baseline every zero-shot figure is placed against."""
        torch.manual_seed(seed)
        return build_encoder(EncoderConfig.from_dict(self.ck["model_config"])).to(device)

    @property
    def text_path(self):
        """The run's own copy of its text matrix, else (runs from before the copy) the path
        ``fit`` was given."""
        own = self.dir / shards.RUN_TEXT
        return own if own.exists() else Path(self.info.text)

    def text_matrix(self):
        """The text matrix the run was trained against — its own copy, else (runs from before
        the copy) the recorded path — refused unless its content hash is the run's."""
        where = self.text_path
        try:
            matrix = shards.read_text_matrix(where)
        except ECGShardError as exc:
            raise ECGShardError(f"the run's text matrix is needed to embed new class texts the "
                                f"way it was trained ({exc})") from None
        if matrix.sha256 != self.info.text_sha256:
            raise ECGShardError(
                f"{where} is not the text matrix {self.dir} was trained against (content "
                f"sha256 {matrix.sha256[:12]} there, {self.info.text_sha256[:12]} in "
                f"{shards.RUN_INFO}): it was rewritten since. Restore it, or train a run against "
                f"the new matrix")
        if "load" not in matrix.attrs:
            raise ECGShardError(f"{where} predates the record of how it was embedded; rerun "
                                f"`ecgshard embed-text` with the same options (its embeddings "
                                f"do not change)")
        return matrix

    def class_texts(self, matrix):
        """The class texts ``matrix`` was embedded with (``class_texts_bytes``), parsed."""
        return concepts.load_class_texts(raw=self.class_texts_bytes(matrix))

    def class_texts_bytes(self, matrix):
        """The bytes of the class texts ``matrix`` was embedded with: the run's own copy, else
        the file the matrix names (the package's when none), refused when they differ from
        those the matrix or the run recorded."""
        own = self.dir / shards.RUN_CLASS_TEXTS
        load = matrix.attrs["load"]
        source = own if own.exists() else load.get("class_texts")
        if source is not None and not Path(source).exists():
            raise ECGShardError(f"the class texts {self.dir}'s text matrix was embedded with, "
                                f"{source}, are not there (a relative path is read from the "
                                f"directory embed-text ran in); give the run a copy at {own}")
        raw = concepts.class_texts_bytes(source)
        digest = hashlib.sha256(raw).hexdigest()
        for what, expected in ((shards.RUN_INFO, self.info.class_texts_sha256),
                               ("the text matrix", load.get("class_texts_sha256"))):
            if expected and expected != digest:
                raise ECGShardError(
                    f"the class texts {source or 'of this ecgshard package'} differ from those "
                    f"{self.dir} was trained with (sha256 {digest[:12]} now, {expected[:12]} in "
                    f"{what}): new class texts would be written differently from the trained "
                    f"rows")
        return raw
