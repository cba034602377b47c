"""Command line: parse options, build a config, call the stage's ``run``. No logic here.

Every default and every choice list comes from the stage configs (``ecgshard.config``) and the
registries they name; this file only says how each field is spelled and explained. Each
command imports its stage inside its function, on purpose: a stage pulls in torch, numba or
scikit-learn, which `--help` and every other command should not pay for.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys

import click

from . import config as C
from .config import fold_ranges
from .errors import ECGShardError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ECGShardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            # an ordinary file-system refusal (read-only --out, permissions, a missing
            # directory): one line naming the file, not a traceback
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error:{where}: {exc.strerror or exc}", err=True)
            sys.exit(2)


class _Choice(click.Choice):
    """The allowed values of a config field, looked up when used (a registry behind a choice
    may import torch, which a CLI call that does not need it should not pay for)."""

    def __init__(self, cls, name):
        self._field = (cls, name)
        self.case_sensitive = True

    @property
    def choices(self):
        return tuple(sorted(str(c) for c in C.allowed(*self._field) if c is not None))


def _opt(cls, name, *decls, **kw):
    """A click option for field ``name`` of config ``cls``: its default and choices from there.
    A tuple field is typed as a comma list ("1-8" for folds) unless the option repeats or
    takes several values."""
    default = C.default(cls, name)
    if isinstance(default, tuple) and not kw.get("multiple") and "nargs" not in kw:
        default = fold_ranges(default) if name.endswith("folds") else \
            ",".join(map(str, default))
    if name in getattr(cls, "CHOICES", {}):     # the choices are looked up when used
        kw["type"] = _Choice(cls, name)
    kw.setdefault("show_default", default not in (None, "", ()))
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), default=default, **kw)


DEVICE_HELP = ("auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps; chosen at run "
               "time, one code path")


def _folds(text):
    """'1-8' or '1,2,3' -> (1, ..., 8)."""
    out = []
    for part in str(text).split(","):
        lo, _, hi = part.partition("-")
        try:
            out += range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise click.BadParameter(f"{text!r}: folds are numbers, as 1-8 or 1,3,5") from None
    return tuple(out)


def _codes(text):
    return tuple(c.strip() for c in str(text or "").split(",") if c.strip())


# the commands that run torch: their thread count is chosen before it is imported
TORCH_COMMANDS = ("embed-text", "fit", "zeroshot", "predict", "embed", "probe", "experiment",
                  "export", "text-sim")


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch (and BLAS) threads; 0: the cores this process may use, less those "
              "other jobs keep busy (docs/performance.md).")
@click.version_option(package_name="ecgshard")
@click.pass_context
def main(ctx, verbose, quiet, threads):
    """Zero-shot 12-lead ECG classification against a frozen clinical text encoder."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if threads or ctx.invoked_subcommand in TORCH_COMMANDS:
        from .device import set_threads

        set_threads(threads)
    logging.getLogger("numba").setLevel(logging.WARNING)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"        # progress bars off, as the INFO lines are
    if not verbose:
        # the text encoders' libraries report every load ("Loading weights 103/103", INFO
        # lines) even into files: their warnings stay, the rest only with -v
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("sentence_transformers", "transformers", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.WARNING)


B = C.BuildConfig


@main.command()
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=_Choice(B, "format"), required=True,
              help="The source database (ecgshard/databases/).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Shard directory.")
@_opt(B, "fs", help="Target sampling rate, Hz.")
@_opt(B, "seconds", help="Samples kept per record / fs.")
@_opt(B, "min_seconds", help="Shorter records are skipped (too_short).")
@_opt(B, "band", nargs=2, type=float, help="Band-pass edges, Hz.")
@click.option("--no-band", is_flag=True, help="No band-pass filter.")
@_opt(B, "notch", type=float, help="Notch frequency (50 or 60 Hz).")
@_opt(B, "normalize", help="Keep millivolts, or standardise each lead.")
@_opt(B, "workers", help="Processes; 0 = one per core.")
@_opt(B, "shard_size", help="Records per shard.")
@_opt(B, "min_likelihood", help="PTB-XL: keep statements with at least this likelihood.")
@_opt(B, "min_count", help="MIMIC-IV-ECG: a statement becomes a class on at least this many "
      "records (rarer ones are listed with counts).")
@_opt(B, "ptbxl_rate", help="PTB-XL record folder to read.")
@_opt(B, "dx_map", help="Challenge: SNOMED table CSV(s), comma-separated (the package's table "
      "by default; the official dx_mapping_*.csv work too).")
@_opt(B, "compression")
@_opt(B, "limit", type=int, help="Only the first N records.")
@_opt(B, "flat_leads", help="A record with a flat (missing) lead: a named skip, or kept and "
      "listed under kept_with_notes.")
@_opt(B, "measure", "--measure/--no-measure", help="Measure rate, rhythm, intervals, axis and "
      "voltage of every record from its raw signal (ecgshard.measure; docs/findings.md).")
def build(source_dir, fmt, out, no_band, band, **options):
    """Read raw records and write HDF5 shards and a manifest."""
    from . import build as stage

    cfg = stage.BuildConfig(source_dir=source_dir, out_dir=out, format=fmt,
                            band=None if no_band else band, **options)
    for line in stage.summary_lines(stage.run(cfg)):
        click.echo(line)


@main.command()
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--verify", is_flag=True, help="Hash every shard against its manifest checksum.")
def inspect(shard_dir, verify):
    """Print a shard directory's manifest summary."""
    from . import build as stage

    for line in stage.inspect(shard_dir, verify):
        click.echo(line)


@main.command("measure")
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@_opt(B, "workers", help="Processes; 0 = one per core.")
def measure_command(shard_dir, workers):
    """Add measurements to shards built without them, from their stored signal."""
    from . import build as stage

    manifest = stage.measure_shards(shard_dir, workers)
    for line in stage.measurement_lines(shard_dir, manifest):
        click.echo(line)


def _synthetic():
    from .databases import DATABASES

    return {n: db for n, db in DATABASES.items() if db.synthetic}


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(sorted(_synthetic())))
@click.option("-n", "--records", default=500, show_default=True,
              help="; ".join(f"{n}: {db.synthetic}" for n, db in _synthetic().items()) + ".")
@click.option("--seed", default=0, show_default=True)
def synth(out_dir, fmt, records, seed):
    """Write deterministic synthetic records in a database's own layout (the demo data)."""
    rows = _synthetic()[fmt].write_synthetic(out_dir, records, seed)
    click.echo(f"wrote {len(rows)} synthetic records to {out_dir}")


T = C.TextConfig


def _text_options(command):
    """The text-model options embed-text and experiment share."""
    for decorator in reversed((
            _opt(T, "model", "--model", "--text-model",
                 help="Hugging Face id or local path, a short name (clinicalbert, medcpt, "
                 "pubmedbert, biobert), or 'minilm-offline' for the bundled MiniLM."),
            _opt(T, "pooling", help="Pooling for plain BERT models (auto: the registered "
                 "one for a known model, else mean)."),
            _opt(T, "templates", "--template", "templates", multiple=True,
                 help="Prompt template with {name}, e.g. 'an ECG showing {name}' (repeatable: "
                 "averaged)."),
            _opt(T, "texts", help="Class texts: the name; its findings as one description; "
                 "both; each finding (averaged); or an ensemble of name, synonyms and "
                 "name: description."))):
        command = decorator(command)
    return command


@main.command("embed-text")
@click.option("--vocab", multiple=True, required=True,
              help="Shard directory or CSV/JSON of codes and names (repeatable).")
@click.option("--out", required=True, help="Text matrix file (.h5).")
@_text_options
@_opt(T, "class_texts", help="JSON of class synonyms and findings (or {code: description}) "
      "instead of the package's ecgshard/data/class_texts.json.")
@_opt(T, "device", help=DEVICE_HELP)
@_opt(T, "batch_size")
@click.option("--force", is_flag=True, help="Recompute even when the cache is up to date.")
def embed_text(vocab, out, templates, **options):
    """Embed class texts with a frozen text encoder (cached)."""
    from . import text as stage

    cfg = stage.TextConfig(vocab=tuple(vocab), out=out, templates=tuple(templates), **options)
    click.echo(f"text matrix: {stage.run(cfg)}")


@main.command("text-sim")
@click.argument("text_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--top", default=20, show_default=True)
def text_sim(text_file, top):
    """Print the most similar class-text pairs (what zero-shot cannot separate)."""
    from . import text as stage

    for line in stage.text_sim_lines(text_file, top):
        click.echo(line)


@main.command()
@click.argument("codes", nargs=-1, required=True)
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A run: print each code's status (seen, related, unseen) against its "
              "training classes.")
@click.option("--vocab", type=click.Path(exists=True, file_okay=False),
              help="A shard directory: print each code's holdout closure in its vocabulary.")
def relations(codes, run_dir, vocab):
    """Why a class is seen, related or unseen: its synonyms, parents, children, near-siblings."""
    from . import concepts, findings, shards

    info = shards.read_run_info(run_dir) if run_dir else None
    vocabulary = shards.class_codes(shards.load_manifest(vocab)) if vocab else None
    def status(code):           # the run's: its classes and what its statements restate
        return findings.statuses([code], info.train_codes, info.finding_codes)[code]

    for code in codes:
        for line in concepts.describe(code, info and info.train_codes, vocabulary,
                                      status=status if info else None):
            click.echo(line)


F = C.FitConfig


def _fit_options(command):
    """The training options fit and experiment share."""
    for decorator in reversed((
            _opt(F, "arch"), _opt(F, "loss"), _opt(F, "epochs"), _opt(F, "batch_size"),
            _opt(F, "train_folds"), _opt(F, "val_folds"), _opt(F, "test_folds"),
            _opt(F, "min_positives", help="A training class needs this many positives in the "
                 "training folds."),
            _opt(F, "lr"), _opt(F, "weight_decay", help="AdamW decay of the weights of ndim >= 2 "
                 "(none on norms, biases, the logit scale and bias)."),
            _opt(F, "grad_clip", help="Clip the global gradient norm to this (0: off); the "
                 "log records each epoch's mean norm and clipped share."),
            _opt(F, "warmup", help="Share of the steps with a linear warm-up."),
            _opt(F, "augment", "--augment/--no-augment"),
            _opt(F, "lead_dropout", help="Augmentation: chance that each lead is zeroed."),
            _opt(F, "crop", help="Augmentation: cut up to this many seconds off the start of "
                 "each training record (never more than half of it); 0: off."),
            _opt(F, "width", help="Encoder channel-width multiplier."),
            _opt(F, "train_kinds", help="Train only classes of these statement kinds "
                 "(comma list of diagnostic, form, rhythm; PTB-XL); all by default."),
            _opt(F, "findings", "--findings/--no-findings", help="Train the measured-finding "
                 "statements (rate, rhythm, intervals, axis, voltage; docs/findings.md) as "
                 "extra targets beside the classes; needs shards with measurements "
                 "(`ecgshard measure` adds them)."),
            _opt(F, "findings_sigmoid", help="With --findings: the weight of a per-statement "
                 "sigmoid beside the loss, so that statements true of most records are told "
                 "apart too (docs/findings.md); 0: the loss alone."),
            _opt(F, "log", help="Where each epoch's figures go besides RUN/log.jsonl and "
                 "RUN/learning_curve.png: tensorboard also writes RUN/tensorboard "
                 "(`tensorboard --logdir RUN`; needs the tensorboard package)."),
            _opt(F, "device", help=DEVICE_HELP), _opt(F, "seed"))):
        command = decorator(command)
    return command


@main.command()
@click.option("--shards", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="A shard set (repeatable: train on the union, each class in its own code "
              "system; a held-out concept is held out in every set).")
@_opt(F, "shard_weights", "--shard-weight", "shard_weights", multiple=True, type=float,
      help="Each --shards set's share of an epoch, in the same order (default: by size).")
@click.option("--text", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The text matrix `ecgshard embed-text` wrote (its rows are the fixed targets; "
              "the run keeps a copy).")
@click.option("--out", required=True, help="Run directory.")
@_opt(F, "holdout", help="Comma-separated codes to hold out, or 'default' (the package's "
      "PTB-XL holdout).")
@click.option("--holdout-file", type=click.Path(exists=True, dir_okay=False),
              help="Codes to hold out, one per line.")
@click.option("--holdout-expand", is_flag=True,
              help="Hold out the whole closure: synonyms, parents, children and near-siblings "
              "of the held-out codes, and theirs.")
@click.option("--include-heldout-records", is_flag=True,
              help="NOT zero-shot: train on records that carry held-out labels.")
@_fit_options
@_opt(F, "amp", "--amp/--no-amp", help="bf16 autocast on CUDA.")
@_opt(F, "data")
@_opt(F, "workers", help="Loader processes (stream).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last "
              "checkpoint (same shards, text matrix and settings; more --epochs extend it).")
@_opt(F, "max_steps", type=int, help="Stop after this many optimiser steps (smoke runs, "
      "benchmarks); the schedule is still that of --epochs.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the encoder.")
@click.option("--learn-class-embeddings", is_flag=True,
              help="Supervised reference: class vectors train too (not zero-shot).")
def fit(holdout, holdout_file, train_folds, val_folds, test_folds, train_kinds, compile_,
        **options):
    """Train the ECG encoder against the fixed text matrix, classes held out."""
    from . import fit as stage

    codes = list(_codes(holdout))
    if holdout_file:
        with open(holdout_file) as f:
            codes += [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    cfg = stage.FitConfig(holdout=tuple(codes), train_folds=_folds(train_folds),
                          val_folds=_folds(val_folds), test_folds=_folds(test_folds),
                          train_kinds=_codes(train_kinds), compile=compile_, **options)
    summary = stage.run(cfg)
    click.echo(f"best validation macro AUROC (training classes, folds {val_folds}): "
               f"{summary['best_val_macro_auroc']:.4f}; run in {cfg.out}")


Z = C.ZeroShotConfig


def _zeroshot_options(*macro_flags):
    """The scoring options zeroshot and experiment share (``experiment`` spells the macro
    minimum --min-macro-positives only: its --min-positives is fit's)."""
    def add(command):
        for decorator in reversed((
                _opt(Z, "bootstrap", help="Bootstrap replicates (patients resampled)."),
                _opt(Z, "control_seeds", help="Untrained encoders (one per seed) in the "
                     "random-encoder distribution."),
                _opt(Z, "permutations", help="Label-permutation null draws (0: none)."),
                _opt(Z, "min_positives", *macro_flags, "min_macro_positives",
                     help="Positives a class needs to enter a macro figure (fewer: listed)."),
                _opt(Z, "threshold", help="val-seen, val-z (per-class scale from validation "
                     "inputs), youden (optimistic, labelled) or fixed:X."),
                _opt(Z, "scoring", help="findings-unseen (unseen classes read through the "
                     "run's trained finding statements sentence by sentence, the others by "
                     "cosine; cosine for a run without statements), cosine (as trained), "
                     "centered (the text rows' shared direction removed), record-z (each "
                     "record's scores standardised across the vocabulary's texts) or findings "
                     "(every class read through the statements); the controls are scored the "
                     "same way."))):
            command = decorator(command)
        return command
    return add


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run directory `ecgshard fit` wrote.")
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False),
              help="The shard set to score: the run's own (its test folds, held-out classes) "
              "or another dataset (every fold and class with a text).")
@click.option("--text", default="", type=click.Path(dir_okay=False),
              help="A text matrix from the same text model and texts as the run's, covering "
              "the classes to score. Default: the run's own copy, which covers the vocabulary "
              "it was embedded for.")
@click.option("--out", required=True, help="Report directory.")
@_opt(Z, "classes", help="heldout, all, or comma-separated codes.")
@click.option("--folds", default=None, help="Default: the run's test folds (same shard set) "
              "or every fold (another dataset).")
@_zeroshot_options("--min-positives", "--min-macro-positives")
@_opt(Z, "checkpoint")
@_opt(Z, "device", help=DEVICE_HELP)
@click.option("--save-embeddings", is_flag=True, help="Also write embeddings.h5.")
@_opt(Z, "control", "--control/--no-control", help="The random-encoder distribution.")
@click.option("--allow-signal-mismatch", is_flag=True,
              help="Score shards built with another rate, band, notch or normalisation than "
              "the run's training shards.")
@_opt(Z, "leads", help="Score with only these leads present, e.g. I or I,II,III,aVR,aVL,aVF "
      "(the others zeroed); all 12 by default.")
@_opt(Z, "seed")
def zeroshot(run_dir, folds, min_macro_positives, leads, **options):
    """Score classes zero-shot (held-out classes, or another dataset) and write a report."""
    from . import report as present
    from . import zeroshot as stage

    cfg = stage.ZeroShotConfig(run=run_dir, folds=_folds(folds) if folds else None,
                               min_positives=min_macro_positives, leads=_codes(leads),
                               **options)
    for line in present.summary_lines(stage.run(cfg)):
        click.echo(line)


P = C.PredictConfig


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False))
@_opt(P, "classes", multiple=True, help="A class text (repeatable): any words, e.g. "
      "'atrial fibrillation'.")
@_opt(P, "classes_file", type=click.Path(exists=True, dir_okay=False),
      help="One class text per line.")
@_opt(P, "vocab", type=click.Path(exists=True, file_okay=False),
      help="A shard directory: score its classes (by name).")
@_opt(P, "out", help="Scores CSV (and <stem>.classes.csv: each class's status for the run).")
@_opt(P, "top", help="Best classes listed per record.")
@_opt(P, "fs", type=float, help="Sampling rate of .npy/.npz records without one.")
@_opt(P, "leads", help="Score with only these leads present (the others zeroed).")
@_opt(P, "checkpoint")
@_opt(P, "device", help=DEVICE_HELP)
@_opt(P, "flat_leads", help="A record with a flat lead: a named skip, or scored.")
def predict(inputs, classes, leads, **options):
    """Score raw ECG records (WFDB, .npy, .npz; files or directories) against class texts."""
    from . import predict as stage

    cfg = stage.PredictConfig(inputs=tuple(inputs), classes=tuple(classes), leads=_codes(leads),
                              **options)
    result = stage.run(cfg)
    status = dict(zip(result["classes"], result["status"]))
    click.echo("classes: " + "; ".join(f"{c} ({status[c]})" for c in result["classes"]))
    for row in result["rows"]:
        detail = row["top"] if row["status"] == "ok" else \
            f"SKIPPED {row['reason']}: {row['detail']}"
        click.echo(f"{row['record']}: {detail}")
    if cfg.out:
        click.echo(f"(scores written to {cfg.out})")


X = C.ExportConfig


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@_opt(X, "checkpoint")
@click.option("--report", "reports", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A zeroshot report directory of this run whose figures the model card "
              "quotes (repeatable).")
def export(**options):
    """Write a run as a self-contained model directory (safetensors weights, config, text side,
    model card) that ZeroShotClassifier.from_pretrained loads, from disk or the Hugging Face
    Hub."""
    from . import export as stage

    out = stage.run(stage.ExportConfig(**options))
    click.echo(f"model written to {out}: ZeroShotClassifier.from_pretrained({str(out)!r})")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory to write (replaced as a whole).")
def ensemble(runs, out):
    """Write several runs of one recipe and holdout (fits of other seeds: `fit --seed`) as one
    run whose encoder averages theirs; every stage reads it like a run."""
    from . import ensemble as stage

    out = stage.run(C.EnsembleConfig(runs=tuple(runs), out=out))
    click.echo(f"{len(runs)} runs averaged into {out}")


EM, PR = C.EmbedConfig, C.ProbeConfig


@main.command()
@click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Embeddings file (.h5).")
@click.option("--folds", default=None, help="Folds to embed (e.g. 9-10); all by default.")
@_opt(EM, "checkpoint")
@_opt(EM, "device")
@_opt(EM, "leads", help="Embed with only these leads present (the others zeroed).")
@click.option("--allow-signal-mismatch", is_flag=True,
              help="Embed shards built with another signal path than the run's.")
def embed(folds, leads, **options):
    """Write a run's embeddings of a shard set with record ids, patients, folds and labels."""
    from . import embed as stage

    cfg = stage.EmbedConfig(folds=_folds(folds) if folds else None, leads=_codes(leads),
                            **options)
    click.echo(f"embeddings: {stage.run(cfg)}")


@main.command()
@click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False))
@_opt(PR, "out", help="Directory for probe.json.")
@_opt(PR, "fractions", help="Shares of the training labels, comma-separated.")
@click.option("--train-folds", default=None, help="Default: the run's training folds.")
@click.option("--test-folds", default=None, help="Default: the run's test folds.")
@_opt(PR, "min_positives", help="Test positives a class needs to enter the macro.")
@_opt(PR, "c", "--c", help="Inverse L2 strength of the logistic regressions.")
@_opt(PR, "seed")
@_opt(PR, "checkpoint")
@_opt(PR, "device")
@click.option("--allow-signal-mismatch", is_flag=True,
              help="Probe shards built with another signal path than the run's.")
def probe(fractions, train_folds, test_folds, **options):
    """Linear probes on frozen embeddings with 1/10/100% of the training labels, beside the
    same probe on an untrained encoder."""
    from . import probe as stage

    cfg = stage.ProbeConfig(fractions=tuple(float(f) for f in _codes(fractions)),
                            train_folds=_folds(train_folds) if train_folds else None,
                            test_folds=_folds(test_folds) if test_folds else None, **options)
    for line in stage.summary_lines(stage.run(cfg)):
        click.echo(line)


@main.command()
@click.argument("report_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))
def report(report_dirs):
    """Print several zero-shot reports side by side."""
    from . import report as present

    for line in present.report_table(report_dirs):
        click.echo(line)


D = C.DownloadConfig


@main.command()
@click.argument("database", type=_Choice(D, "database"))
@click.argument("dest", type=click.Path(file_okay=False))
@_opt(D, "version", "--version", "version", help="Database version (PTB-XL 1.0.3, Challenge "
      "2021 1.0.3 by default).")
@_opt(D, "base_url", help="Base of the file tree (PhysioNet by default).")
@_opt(D, "workers", help="Parallel transfers.")
@_opt(D, "rate", help="PTB-XL record folders to fetch.")
@_opt(D, "sources", help="Challenge: comma-separated training/ folders (e.g. georgia,ptb-xl); "
      "all by default.")
@_opt(D, "retries")
def download(sources, **options):
    """Download a database, verified against its SHA256SUMS.txt (resumable)."""
    from . import download as stage

    cfg = stage.DownloadConfig(sources=_codes(sources), **options)
    s = stage.run(cfg)
    click.echo(f"{s['files']} files, {s['bytes'] / 1e6:.1f} MB, {s['verified']} verified "
               f"({s['already_present']} already present), {len(s['failed'])} failed -> "
               f"{cfg.dest}")


E = C.ExperimentConfig


@main.command()
@click.argument("which", type=click.Choice(["a", "b", "c"]))
@click.option("--ptbxl", required=True, type=click.Path(exists=True, file_okay=False),
              help="PTB-XL directory (with ptbxl_database.csv).")
@click.option("--cinc", type=click.Path(exists=True, file_okay=False),
              help="Challenge 2021 directory (experiment b; scored too in c when given).")
@click.option("--mimic", type=click.Path(exists=True, file_okay=False),
              help="MIMIC-IV-ECG directory (experiment c: trained on its machine statements).")
@_opt(E, "min_count", help="Statements on fewer records are left out of training (c).")
@click.option("--work", required=True, help="Working directory (shards, text, runs, reports).")
@_text_options
@_fit_options
@_zeroshot_options("--min-macro-positives")
@_opt(E, "splits", help="Holdout splits (a).")
@_opt(E, "holdout_size", help="Classes drawn per random split, before closure (a).")
@_opt(E, "split_seed", type=int, help="Seed of the random splits' draw (a; default: "
      "--seed), so that fits with other seeds can be run on the same splits.")
@_opt(E, "members", help="Fits per run averaged into one (seeds --seed, --seed + 1, ...; "
      "`ecgshard ensemble`).")
@_opt(E, "min_val_positives", help="A class may be held out with this many validation "
      "positives (a).")
@_opt(E, "max_excluded", help="A random split may exclude at most this share of the training "
      "records (a).")
@_opt(E, "score", help="Score the held-out classes on the test folds, or on the validation "
      "folds (for choosing a recipe; the test folds stay unread).")
@_opt(E, "results", help="Markdown file whose section this experiment (re)writes.")
@_opt(E, "label", help="What the data is (heading and section key).")
@_opt(E, "command", help="The command as typed, for the table (default: this one).")
@_opt(Z, "leads", help="Score with only these leads present (the others zeroed).")
def experiment(which, ptbxl, cinc, mimic, work, model, pooling, templates, texts, train_folds,
               val_folds, test_folds, train_kinds, device, seed, bootstrap, control_seeds,
               permutations, min_macro_positives, threshold, scoring, command, leads,
               **options):
    """Run Experiment A (held-out PTB-XL classes), B (a PTB-XL model on the Challenge 2021
    databases) or C (a MIMIC-IV-ECG model on PTB-XL and the Challenge) end to end."""
    from . import experiments as stage

    fit_options = {k: options.pop(k) for k in list(options) if k in F.__dataclass_fields__}
    cfg = stage.ExperimentConfig(
        work=work, ptbxl=ptbxl, cinc=cinc, mimic=mimic,
        text=C.TextConfig(vocab=(), out="", model=model, pooling=pooling,
                          templates=tuple(templates), texts=texts, device=device),
        fit=C.FitConfig(shards="", text="", out="", train_folds=_folds(train_folds),
                        val_folds=_folds(val_folds), test_folds=_folds(test_folds),
                        train_kinds=_codes(train_kinds), device=device, seed=seed,
                        **fit_options),
        zeroshot=C.ZeroShotConfig(run="", shards="", text="", out="", bootstrap=bootstrap,
                                  control_seeds=control_seeds, permutations=permutations,
                                  min_positives=min_macro_positives, threshold=threshold,
                                  scoring=scoring, device=device, seed=seed,
                                  leads=_codes(leads)),
        command=command or "ecgshard " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        **options)
    result = {"a": stage.run_a, "b": stage.run_b, "c": stage.run_c}[which](cfg)
    click.echo(result["markdown"])
    click.echo(f"(written to {cfg.results})")


if __name__ == "__main__":
    main()
