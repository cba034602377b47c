"""Every stage's typed config, in one light module (no torch, numba or scikit-learn at import).

A config declares its choices once (``CHOICES``: a field -> the allowed values, or a function
returning a registry, imported only when needed) and checks itself when it is made, so a typo
fails before any work. The CLI reads its defaults and choices here and nowhere else; each stage
module re-exports its own config (``fit.FitConfig``...).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import MISSING, dataclass, field
from typing import ClassVar

from .errors import ECGShardError
from .shards import LEADS

DEFAULT_TEXT_MODEL = "emilyalsentzer/Bio_ClinicalBERT"
TEXT_MODES = ("name", "description", "both", "findings", "ensemble")


def _registry(module, name):
    """A registry's names (``ecgshard.<module>.<name>``), imported when a choice is checked."""
    return tuple(getattr(importlib.import_module(f"ecgshard.{module}"), name))


def _download_names():
    return importlib.import_module("ecgshard.download").downloadable()


def allowed(cls, name):
    """The allowed values of field ``name`` of config class ``cls`` (None: any)."""
    choices = getattr(cls, "CHOICES", {}).get(name)
    return tuple(choices()) if callable(choices) else choices


def default(cls, name):
    """The default of field ``name`` of config class ``cls``."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is MISSING else f.default


def check(cfg, *rules):
    """Refuse a config whose choice fields hold another value, or for which one of ``rules``
    (``(condition that must hold, message)``) is false."""
    for name in getattr(cfg, "CHOICES", {}):
        options = allowed(type(cfg), name)
        if getattr(cfg, name) not in options:
            shown = sorted(o for o in options if o is not None)
            raise ECGShardError(f"--{name.replace('_', '-')} must be one of {shown}, got "
                                f"{getattr(cfg, name)!r}")
    for holds, message in rules:
        if not holds:
            raise ECGShardError(message)


def fold_ranges(folds):
    """(1, 2, 3, 5) -> '1-3,5': how folds are written on the command line and in reports."""
    folds, parts, i = sorted(folds), [], 0
    while i < len(folds):
        j = i
        while j + 1 < len(folds) and folds[j + 1] == folds[j] + 1:
            j += 1
        parts.append(str(folds[i]) if i == j else f"{folds[i]}-{folds[j]}")
        i = j + 1
    return ",".join(parts)


def fixed_threshold(rule):
    """X of 'fixed:X' (a finite cosine, in [-1, 1]), or None."""
    head, _, value = rule.partition(":")
    try:
        x = float(value) if head == "fixed" else None
    except ValueError:
        return None
    return x if x is not None and -1.0 <= x <= 1.0 else None


# ---------------------------------------------------------------- the stages

@dataclass(frozen=True)
class BuildConfig:
    source_dir: str
    out_dir: str
    format: str = "ptbxl"
    fs: int = 100
    seconds: float = 10.0
    min_seconds: float = 5.0            # shorter records are skipped ("too_short"; signal.py)
    band: tuple = (0.5, 40.0)
    notch: float | None = None
    normalize: str = "mv"
    workers: int = 0                    # 0: one per CPU core
    shard_size: int = 2048
    min_likelihood: float = 0.0         # PTB-XL: a statement below it is no label
    min_count: int = 1                  # statement vocabularies (MIMIC-IV-ECG): rarer ones out
    ptbxl_rate: str = "auto"            # "100", "500", or auto: the folder needing no resampling
    dx_map: str | None = None           # Challenge: SNOMED table CSV(s); default the package's
    compression: str | None = None
    limit: int | None = None            # first N records only (quick looks)
    flat_leads: str = "skip"            # skip a record with a flat lead, or keep it (noted)
    measure: bool = True                # measurements (ecgshard.measure) beside the signal

    CHOICES: ClassVar[dict] = {"format": lambda: _registry("databases", "DATABASES"),
                               "normalize": ("mv", "zscore"), "ptbxl_rate": ("auto", "100", "500"),
                               "compression": (None, "lzf", "gzip"),
                               "flat_leads": ("skip", "keep")}

    def __post_init__(self):
        check(self, (self.fs > 0 and self.seconds > 0, "--fs and --seconds must be > 0"),
              (self.shard_size > 0 and self.min_count > 0,
               "--shard-size and --min-count must be > 0"),
              (self.limit is None or self.limit > 0, f"--limit must be > 0, got {self.limit}"),
              # an upper edge at or above fs/2 means high-pass only (filters.design)
              (not self.band or 0 < self.band[0] < self.band[1],
               f"--band LOW HIGH must rise from above 0 Hz, got {self.band}"))

    @property
    def signal_path(self):
        from .signal import SignalPath          # deferred on purpose: numba and scipy

        return SignalPath(fs=self.fs, n_samples=self.n_samples,
                          band=tuple(self.band) if self.band else None, notch=self.notch,
                          normalize=self.normalize)

    @property
    def n_samples(self):
        return int(round(self.fs * self.seconds))


@dataclass(frozen=True)
class TextConfig:
    vocab: tuple                        # shard directories and/or CSV/JSON vocabulary files
    out: str
    model: str = DEFAULT_TEXT_MODEL
    pooling: str = "auto"               # plain BERTs: mean, cls, or auto (text.TEXT_ENCODERS)
    templates: tuple = ("{name}",)      # several are averaged, as CLIP does
    texts: str = "both"                 # chosen by measurement: docs/results.md
    device: str = "auto"
    batch_size: int = 64
    class_texts: str | None = None      # JSON of synonyms and findings; default the package's
    force: bool = False

    CHOICES: ClassVar[dict] = {"texts": TEXT_MODES, "pooling": ("auto", "mean", "cls")}

    def __post_init__(self):
        check(self, (all("{name}" in t for t in self.templates),
                     f"every --template needs {{name}}, got {list(self.templates)}"),
              (self.batch_size > 0, "--batch-size must be > 0"))


@dataclass(frozen=True)
class FitConfig:
    shards: tuple                            # one shard set or several (their union); a str: one
    text: str
    out: str
    holdout: tuple = ()
    holdout_expand: bool = False
    include_heldout_records: bool = False    # train on records that carry held-out labels
    arch: str = "resnet1d"
    loss: str = "soft-clip"                  # chosen by measurement: docs/training.md
    epochs: int = 30
    batch_size: int = 64                     # global; chosen by measurement against 32 and
                                             # 128: docs/training.md
    lr: float = 3e-3
    weight_decay: float = 1e-2               # on weights of ndim >= 2 only (models.py)
    grad_clip: float = 1.0                   # max global gradient norm; 0: no clipping
    warmup: float = 0.05                     # fraction of steps with a linear warm-up
    device: str = "auto"
    amp: bool = True                         # bf16 autocast on CUDA; no-op on CPU
    train_folds: tuple = (1, 2, 3, 4, 5, 6, 7, 8)
    val_folds: tuple = (9,)
    test_folds: tuple = (10,)
    min_positives: int = 5                   # a training class needs this many train positives
    data: str = "auto"                       # auto | stream | preload
    workers: int = 2
    augment: bool = True
    lead_dropout: float = 0.1                # augmentation: chance each lead is zeroed
    crop: float = 2.0                        # augmentation: up to this many seconds cut off a
                                             # record's start; chosen by measurement:
                                             # docs/training.md
    width: float = 1.0                       # encoder channel-width multiplier
    train_kinds: tuple = ()                  # statement kinds trained (form, rhythm...); all
    shard_weights: tuple = ()                # per shard set, its share of each epoch; by size
    seed: int = 0
    resume: bool = False
    max_steps: int | None = None             # stop early (smoke runs, benchmarks)
    compile: bool = False
    learn_class_embeddings: bool = False     # supervised reference: not a zero-shot model
    findings: bool = True                    # measured findings as extra targets; chosen by
                                             # measurement: docs/findings.md
    findings_sigmoid: float = 0.0            # weight of a per-statement sigmoid beside the
                                             # loss (losses.FindingsSigmoidLoss); measured, not
                                             # kept: docs/findings.md
    log: str = "jsonl"                       # + "tensorboard": event files in RUN/tensorboard

    CHOICES: ClassVar[dict] = {"arch": lambda: _registry("models", "ARCHS"),
                               "loss": lambda: _registry("losses", "LOSSES"),
                               "data": ("auto", "stream", "preload"),
                               "log": ("jsonl", "tensorboard")}

    def __post_init__(self):
        if isinstance(self.shards, str):
            object.__setattr__(self, "shards", (self.shards,))
        test = set(self.test_folds)
        check(
            self,
            (len(set(self.shards)) == len(self.shards), f"--shards named twice: {self.shards}"),
            (not self.shard_weights or (len(self.shard_weights) == len(self.shards)
                                        and all(w > 0 for w in self.shard_weights)),
             f"--shard-weight: one weight > 0 per --shards ({len(self.shards)}), got "
             f"{self.shard_weights}"),
            (not set(self.train_folds) & test and not set(self.val_folds) & test,
             f"train {self.train_folds} or validation {self.val_folds} folds are also test "
             f"folds {self.test_folds}; test folds never steer training"),
            (not set(self.train_folds) & set(self.val_folds),
             f"train {self.train_folds} and validation {self.val_folds} folds overlap"),
            (self.epochs > 0 and self.batch_size > 0 and self.lr > 0,
             "--epochs, --batch-size and --lr must be > 0"),
            (0 <= self.warmup < 1, "--warmup is a fraction of the steps, in [0, 1)"),
            (0 <= self.lead_dropout < 1, "--lead-dropout is a probability, in [0, 1)"),
            (self.crop >= 0, "--crop is seconds cut off a record's start, >= 0"),
            (self.width > 0, "--width must be > 0"),
            (self.findings_sigmoid >= 0, "--findings-sigmoid must be >= 0"),
            (self.grad_clip >= 0, "--grad-clip is a gradient norm >= 0 (0: off)"),
            (self.min_positives > 0, "--min-positives must be > 0"))


@dataclass(frozen=True)
class ZeroShotConfig:
    run: str
    shards: str
    out: str
    text: str = ""                      # "": the run's own copy of its matrix
    classes: str = "heldout"            # heldout | all | CODE,CODE,...
    folds: tuple | None = None          # default: the run's test folds (same shards) or all
    bootstrap: int = 1000
    threshold: str = "val-z"            # chosen by measurement: docs/zeroshot.md
    checkpoint: str = "best"
    device: str = "auto"
    save_embeddings: bool = False
    control: bool = True
    control_seeds: int = 10             # untrained encoders in the random-encoder distribution
    permutations: int = 1000            # label-permutation null draws
    min_positives: int = 10             # positives a class needs to enter a macro figure
    allow_signal_mismatch: bool = False
    leads: tuple = ()                   # score with only these present (others zeroed); all
    seed: int = 0
    scoring: str = "findings-unseen"    # scoring.Scorer; chosen by measurement:
                                        # docs/findings.md

    CHOICES: ClassVar[dict] = {"checkpoint": ("best", "last"),
                               "scoring": ("findings-unseen", "cosine", "centered",
                                           "record-z", "findings")}
    THRESHOLDS: ClassVar[tuple] = ("val-seen", "val-z", "youden", "fixed:X")

    def __post_init__(self):
        check(
            self,
            (self.threshold in self.THRESHOLDS[:3] or fixed_threshold(self.threshold) is not None,
             f"--threshold must be one of {list(self.THRESHOLDS)} (X a cosine in [-1, 1]), got "
             f"{self.threshold!r}"),
            (min(self.bootstrap, self.control_seeds, self.permutations) >= 0,
             "--bootstrap, --control-seeds and --permutations must be >= 0"),
            (self.min_positives > 0, "--min-positives must be > 0"),
            (set(self.leads) <= set(LEADS) and len(set(self.leads)) == len(self.leads),
             f"--leads takes distinct names of {list(LEADS)}, got {list(self.leads)}"))


@dataclass(frozen=True)
class PredictConfig:
    run: str
    inputs: tuple                       # record files (.hea, .npy, .npz) and directories
    classes: tuple = ()                 # free class texts
    classes_file: str | None = None     # one class text per line
    vocab: str | None = None            # a shard directory: its classes' names
    out: str | None = None              # CSV; a <stem>.classes.csv beside it
    top: int = 5                        # best classes shown per record
    fs: float | None = None             # sampling rate of .npy/.npz input without one
    leads: tuple = ()                   # score with only these present (others zeroed); all
    checkpoint: str = "best"
    device: str = "auto"
    flat_leads: str = "skip"
    batch_size: int = 256

    CHOICES: ClassVar[dict] = {"checkpoint": ("best", "last"), "flat_leads": ("skip", "keep")}

    def __post_init__(self):
        check(self, (bool(self.inputs), "give at least one record file or directory"),
              (sum(map(bool, (self.classes, self.classes_file, self.vocab))) == 1,
               "give the classes one way: --classes, --classes-file or --vocab"),
              (self.top >= 0 and self.batch_size > 0, "--top must be >= 0, --batch-size > 0"),
              (self.fs is None or self.fs > 0, "--fs must be > 0"),
              (set(self.leads) <= set(LEADS), f"--leads takes names of {list(LEADS)}"))


@dataclass(frozen=True)
class ExportConfig:
    run: str
    out: str
    checkpoint: str = "best"
    reports: tuple = ()                 # zeroshot reports of the run the model card quotes

    CHOICES: ClassVar[dict] = {"checkpoint": ("best", "last")}


@dataclass(frozen=True)
class EnsembleConfig:
    runs: tuple                         # run directories of one recipe and holdout
    out: str

    def __post_init__(self):
        check(self, (len(self.runs) >= 2, "give at least two runs to average"),
              (len({os.path.realpath(r) for r in self.runs}) == len(self.runs),
               "a run is given twice"))


@dataclass(frozen=True)
class EmbedConfig:
    run: str
    shards: str
    out: str
    folds: tuple | None = None          # all folds by default
    checkpoint: str = "best"
    device: str = "auto"
    leads: tuple = ()                   # embed with only these present (others zeroed); all
    allow_signal_mismatch: bool = False

    CHOICES: ClassVar[dict] = {"checkpoint": ("best", "last")}

    def __post_init__(self):
        check(self, (set(self.leads) <= set(LEADS), f"--leads takes names of {list(LEADS)}"))


@dataclass(frozen=True)
class ProbeConfig:
    run: str
    shards: str
    out: str | None = None              # probe.json (and the table) written here
    fractions: tuple = (0.01, 0.1, 1.0) # shares of the training folds' labelled records
    train_folds: tuple | None = None    # default: the run's training folds
    test_folds: tuple | None = None     # default: the run's test folds
    min_positives: int = 10             # test positives a class needs to enter the macro
    c: float = 1.0                      # inverse L2 strength of the logistic regressions
    seed: int = 0
    checkpoint: str = "best"
    device: str = "auto"
    allow_signal_mismatch: bool = False

    CHOICES: ClassVar[dict] = {"checkpoint": ("best", "last")}

    def __post_init__(self):
        check(self, (all(0 < f <= 1 for f in self.fractions) and self.fractions,
                     f"--fractions are shares in (0, 1], got {self.fractions}"),
              (self.min_positives > 0 and self.c > 0, "--min-positives and --c must be > 0"))


@dataclass(frozen=True)
class DownloadConfig:
    database: str
    dest: str
    version: str | None = None
    base_url: str | None = None
    workers: int = 4
    rate: str = "100"                   # PTB-XL: 100, 500 or all (record folders to fetch)
    sources: tuple = ()                 # Challenge: training/<source> folders (all if empty)
    retries: int = 5
    backoff: float = 1.0                # seconds, doubled per retry
    timeout: float = 60.0

    CHOICES: ClassVar[dict] = {"database": lambda: _download_names(),
                               "rate": ("100", "500", "all")}

    def __post_init__(self):
        check(self, (self.workers > 0 and self.retries >= 0,
                     "--workers must be > 0 and --retries >= 0"))


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment: where, on what, and the stage configs it runs with. ``fit``, ``text`` and
    ``zeroshot`` are templates; each run fills in its shards, text matrix, holdout and output
    with ``dataclasses.replace``."""
    work: str
    ptbxl: str
    cinc: str | None = None
    mimic: str | None = None            # experiment c: trained on its machine statements
    min_count: int = 10                 # experiment c: statements on fewer records left out
    fit: FitConfig = field(default_factory=lambda: FitConfig(shards="", text="", out=""))
    text: TextConfig = field(default_factory=lambda: TextConfig(vocab=(), out=""))
    zeroshot: ZeroShotConfig = field(
        default_factory=lambda: ZeroShotConfig(run="", shards="", text="", out=""))
    splits: int = 6                     # holdout splits; the headline aim is read on six
    holdout_size: int = 4              # classes drawn per random split (before expansion)
    split_seed: int | None = None      # the random splits' draw; None: the fit's --seed
    members: int = 1                   # fits per split averaged into one (seeds --seed, +1, ...)
    min_val_positives: int = 5         # a class is drawn only with this many in the val folds
    max_excluded: float = 0.25         # a random split may exclude at most this share of records
    build_workers: int = 0
    score: str = "test"                 # where held-out classes are scored: test or val folds
    results: str = "docs/results.md"
    label: str = ""                     # what the data is, for the table's heading
    command: str = ""                   # the command that ran it, for the table

    CHOICES: ClassVar[dict] = {"score": ("test", "val")}

    def __post_init__(self):
        check(self, (self.splits > 0 and self.holdout_size > 0,
                     "--splits and --holdout-size must be > 0"),
              (self.members > 0, "--members must be > 0"),
              (0 < self.max_excluded <= 1, "--max-excluded is a share in (0, 1]"),
              (self.min_count > 0, "--min-count must be > 0"))
