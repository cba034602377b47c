"""Command line: parse options, build a config, call the stage's ``run``. No logic here."""
from __future__ import annotations

import logging
import sys

import click

from .databases import DATABASES
from .download import downloadable
from .errors import ECGShardError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ECGShardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.version_option(package_name="ecgshard")
def main(verbose, quiet):
    """Zero-shot 12-lead ECG classification against a frozen clinical text encoder."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numba").setLevel(logging.WARNING)


@main.command()
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(sorted(DATABASES)), required=True,
              help="The source database (ecgshard/databases/).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Shard directory.")
@click.option("--fs", default=100, show_default=True, help="Target sampling rate, Hz.")
@click.option("--seconds", default=10.0, show_default=True, help="Samples kept per record / fs.")
@click.option("--min-seconds", default=5.0, show_default=True,
              help="Shorter records are skipped (too_short).")
@click.option("--band", nargs=2, type=float, default=(0.5, 40.0), show_default=True,
              help="Band-pass edges, Hz.")
@click.option("--no-band", is_flag=True, help="No band-pass filter.")
@click.option("--notch", type=float, default=None, help="Notch frequency (50 or 60 Hz).")
@click.option("--normalize", type=click.Choice(["mv", "zscore"]), default="mv",
              show_default=True, help="Keep millivolts, or standardise each lead.")
@click.option("--workers", default=0, show_default=True, help="Processes; 0 = one per core.")
@click.option("--shard-size", default=2048, show_default=True, help="Records per shard.")
@click.option("--min-likelihood", default=0.0, show_default=True,
              help="PTB-XL: keep statements with at least this likelihood.")
@click.option("--ptbxl-rate", type=click.Choice(["auto", "100", "500"]), default="auto",
              show_default=True, help="PTB-XL record folder to read.")
@click.option("--dx-map", default=None, help="Challenge: SNOMED table CSV(s), comma-separated "
              "(the package's table by default; the official dx_mapping_*.csv work too).")
@click.option("--compression", type=click.Choice(["lzf", "gzip"]), default=None)
@click.option("--limit", type=int, default=None, help="Only the first N records.")
@click.option("--flat-leads", type=click.Choice(["skip", "keep"]), default="skip",
              show_default=True, help="A record with a flat (missing) lead: a named skip, or "
              "kept and listed under kept_with_notes.")
def build(source_dir, fmt, out, fs, seconds, min_seconds, band, no_band, notch, normalize,
          workers, shard_size, min_likelihood, ptbxl_rate, dx_map, compression, limit,
          flat_leads):
    """Read raw records and write HDF5 shards and a manifest."""
    from . import build as stage

    cfg = stage.BuildConfig(source_dir=source_dir, out_dir=out, format=fmt, fs=fs,
                            seconds=seconds, min_seconds=min_seconds,
                            band=None if no_band else band, notch=notch, normalize=normalize,
                            workers=workers, shard_size=shard_size,
                            min_likelihood=min_likelihood, ptbxl_rate=ptbxl_rate,
                            dx_map=dx_map, compression=compression, limit=limit,
                            flat_leads=flat_leads)
    manifest = stage.run(cfg)
    for line in stage.summary_lines(manifest):
        click.echo(line)


@main.command()
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--verify", is_flag=True, help="Hash every shard against its manifest checksum.")
def inspect(shard_dir, verify):
    """Print a shard directory's manifest summary."""
    from . import build as stage

    for line in stage.inspect(shard_dir, verify):
        click.echo(line)


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", required=True,
              type=click.Choice(sorted(n for n, db in DATABASES.items() if db.synthetic)))
@click.option("-n", "--records", default=500, show_default=True,
              help="; ".join(f"{n}: {db.synthetic}" for n, db in DATABASES.items()
                             if db.synthetic) + ".")
@click.option("--seed", default=0, show_default=True)
def synth(out_dir, fmt, records, seed):
    """Write deterministic synthetic records in a database's own layout (the demo data)."""
    rows = DATABASES[fmt].write_synthetic(out_dir, records, seed)
    click.echo(f"wrote {len(rows)} synthetic records to {out_dir}")


@main.command("embed-text")
@click.option("--vocab", multiple=True, required=True,
              help="Shard directory or CSV/JSON of codes and names (repeatable).")
@click.option("--out", required=True, help="Text matrix file (.h5).")
@click.option("--model", default="emilyalsentzer/Bio_ClinicalBERT", show_default=True,
              help="Hugging Face id or local path; 'minilm-offline' for the bundled MiniLM.")
@click.option("--pooling", type=click.Choice(["mean", "cls"]), default="mean", show_default=True,
              help="Pooling for plain BERT models.")
@click.option("--template", "templates", multiple=True,
              help="Prompt template with {name}, e.g. 'an ECG showing {name}' (repeatable: "
              "averaged). Default: the class text alone.")
@click.option("--texts", type=click.Choice(["name", "description", "both"]), default="name",
              show_default=True)
@click.option("--descriptions", default=None, help="JSON {code: text} instead of the package's.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--force", is_flag=True, help="Recompute even when the cache is up to date.")
def embed_text(vocab, out, model, pooling, templates, texts, descriptions, device, batch_size,
               force):
    """Embed class texts with a frozen text encoder (cached)."""
    from . import text as stage

    cfg = stage.TextConfig(vocab=tuple(vocab), out=out, model=model, pooling=pooling,
                           templates=tuple(templates) or ("{name}",), texts=texts,
                           descriptions=descriptions, device=device, batch_size=batch_size,
                           force=force)
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
    from . import concepts

    trained = None
    if run_dir:
        import json
        from pathlib import Path

        trained = json.loads((Path(run_dir) / "classes.json").read_text())["train_codes"]
    vocabulary = None
    if vocab:
        from . import shards

        vocabulary = shards.class_codes(shards.load_manifest(vocab))
    for code in codes:
        for line in concepts.describe(code, trained, vocabulary):
            click.echo(line)


def _folds(text):
    """'1-8' or '1,2,3' -> (1, ..., 8)."""
    out = []
    for part in str(text).split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(out)


@main.command()
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--text", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, help="Run directory.")
@click.option("--holdout", default="", help="Comma-separated codes to hold out, or 'default' "
              "(the package's PTB-XL holdout).")
@click.option("--holdout-file", type=click.Path(exists=True, dir_okay=False),
              help="Codes to hold out, one per line.")
@click.option("--holdout-expand", is_flag=True,
              help="Hold out synonyms, parents and near-duplicates of the held-out codes too.")
@click.option("--include-heldout-records", is_flag=True,
              help="NOT zero-shot: train on records that carry held-out labels.")
@click.option("--arch", type=click.Choice(["resnet1d", "seed-cnn"]), default="resnet1d",
              show_default=True)
@click.option("--loss", type=click.Choice(["bce", "clip", "triplet"]), default="clip",
              show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--weight-decay", default=1e-2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--train-folds", default="1-8", show_default=True)
@click.option("--val-folds", default="9", show_default=True)
@click.option("--test-folds", default="10", show_default=True)
@click.option("--min-positives", default=5, show_default=True)
@click.option("--data", type=click.Choice(["auto", "stream", "preload"]), default="auto",
              show_default=True)
@click.option("--workers", default=2, show_default=True, help="Loader processes (stream).")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True)
@click.option("--max-steps", type=int, default=None)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the encoder.")
@click.option("--learn-class-embeddings", is_flag=True,
              help="Supervised reference: class vectors train too (not zero-shot).")
def fit(shards, text, out, holdout, holdout_file, holdout_expand, include_heldout_records, arch,
        loss, epochs, batch_size, lr, weight_decay, device, amp, train_folds, val_folds,
        test_folds, min_positives, data, workers, augment, seed, resume, max_steps, compile_,
        learn_class_embeddings):
    """Train the ECG encoder against the fixed text matrix, classes held out."""
    from . import fit as stage

    codes = [c.strip() for c in holdout.split(",") if c.strip()]
    if holdout_file:
        with open(holdout_file) as f:
            codes += [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    cfg = stage.FitConfig(shards=shards, text=text, out=out, holdout=tuple(codes),
                          holdout_expand=holdout_expand,
                          include_heldout_records=include_heldout_records, arch=arch, loss=loss,
                          epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          device=device, amp=amp, train_folds=_folds(train_folds),
                          val_folds=_folds(val_folds), test_folds=_folds(test_folds),
                          min_positives=min_positives, data=data, workers=workers,
                          augment=augment, seed=seed, resume=resume, max_steps=max_steps,
                          compile=compile_, learn_class_embeddings=learn_class_embeddings)
    summary = stage.run(cfg)
    click.echo(f"best validation macro AUROC (training classes, folds {val_folds}): "
               f"{summary['best_val_macro_auroc']:.4f}; run in {out}")


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--text", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, help="Report directory.")
@click.option("--classes", default="heldout", show_default=True,
              help="heldout, all, or comma-separated codes.")
@click.option("--folds", default=None, help="Default: the run's test folds (same shard set) "
              "or every fold (another dataset).")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap replicates.")
@click.option("--threshold", default="val-seen", show_default=True,
              help="val-seen, val-z (per-class scale from validation inputs), youden "
              "(optimistic, labelled) or fixed:X.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--save-embeddings", is_flag=True, help="Also write embeddings.h5.")
@click.option("--no-control", is_flag=True, help="Skip the random-encoder distribution.")
@click.option("--control-seeds", default=10, show_default=True,
              help="Untrained encoders (one per seed) in the random-encoder distribution.")
@click.option("--permutations", default=1000, show_default=True,
              help="Label-permutation null draws (0: none).")
@click.option("--min-positives", default=10, show_default=True,
              help="Positives a class needs to enter a macro figure (fewer: listed).")
@click.option("--allow-signal-mismatch", is_flag=True,
              help="Score shards built with another rate, band, notch or normalisation than "
              "the run's training shards.")
@click.option("--seed", default=0, show_default=True)
def zeroshot(run_dir, shards, text, out, classes, folds, bootstrap, threshold, checkpoint,
             device, save_embeddings, no_control, control_seeds, permutations, min_positives,
             allow_signal_mismatch, seed):
    """Score classes zero-shot (held-out classes, or another dataset) and write a report."""
    from . import zeroshot as stage

    cfg = stage.ZeroShotConfig(run=run_dir, shards=shards, text=text, out=out, classes=classes,
                               folds=_folds(folds) if folds else None, bootstrap=bootstrap,
                               threshold=threshold, checkpoint=checkpoint, device=device,
                               save_embeddings=save_embeddings, control=not no_control,
                               control_seeds=control_seeds, permutations=permutations,
                               min_positives=min_positives,
                               allow_signal_mismatch=allow_signal_mismatch, seed=seed)
    for line in stage.summary_lines(stage.run(cfg)):
        click.echo(line)


@main.command()
@click.argument("report_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))
def report(report_dirs):
    """Print several zero-shot reports side by side."""
    from . import zeroshot as stage

    for line in stage.report_table(report_dirs):
        click.echo(line)


@main.command()
@click.argument("database", type=click.Choice(downloadable()))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--version", "db_version", default=None, help="Database version (PTB-XL 1.0.3, "
              "Challenge 2021 1.0.3 by default).")
@click.option("--base-url", default=None, help="Base of the file tree (PhysioNet by default).")
@click.option("--workers", default=4, show_default=True, help="Parallel transfers.")
@click.option("--rate", type=click.Choice(["100", "500", "all"]), default="100",
              show_default=True, help="PTB-XL record folders to fetch.")
@click.option("--sources", default="", help="Challenge: comma-separated training/ folders "
              "(e.g. georgia,ptb-xl); all by default.")
@click.option("--retries", default=5, show_default=True)
def download(database, dest, db_version, base_url, workers, rate, sources, retries):
    """Download a database, verified against its SHA256SUMS.txt (resumable)."""
    from . import download as stage

    cfg = stage.DownloadConfig(database=database, dest=dest, version=db_version,
                               base_url=base_url, workers=workers, rate=rate,
                               sources=tuple(s for s in sources.split(",") if s), retries=retries)
    s = stage.run(cfg)
    click.echo(f"{s['files']} files, {s['bytes'] / 1e6:.1f} MB, {s['verified']} verified "
               f"({s['already_present']} already present), {len(s['failed'])} failed -> {dest}")


@main.command()
@click.argument("which", type=click.Choice(["a", "b"]))
@click.option("--ptbxl", required=True, type=click.Path(exists=True, file_okay=False),
              help="PTB-XL directory (with ptbxl_database.csv).")
@click.option("--cinc", type=click.Path(exists=True, file_okay=False),
              help="Challenge 2021 directory (experiment b).")
@click.option("--work", required=True, help="Working directory (shards, text, runs, reports).")
@click.option("--text-model", default="emilyalsentzer/Bio_ClinicalBERT", show_default=True)
@click.option("--pooling", type=click.Choice(["mean", "cls"]), default="mean", show_default=True)
@click.option("--texts", type=click.Choice(["name", "description", "both"]), default="name",
              show_default=True, help="Class texts (see embed-text).")
@click.option("--template", "templates", multiple=True, help="Prompt template(s) with {name}.")
@click.option("--splits", default=3, show_default=True, help="Holdout splits (a).")
@click.option("--holdout-size", default=4, show_default=True)
@click.option("--min-val-positives", default=5, show_default=True,
              help="A class may be held out with this many validation positives (a).")
@click.option("--max-excluded", default=0.25, show_default=True,
              help="A split may exclude at most this share of the training records (a).")
@click.option("--train-folds", default="1-8", show_default=True)
@click.option("--val-folds", default="9", show_default=True)
@click.option("--test-folds", default="10", show_default=True)
@click.option("--min-macro-positives", default=10, show_default=True,
              help="Positives a class needs to enter a macro figure.")
@click.option("--control-seeds", default=10, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--arch", type=click.Choice(["resnet1d", "seed-cnn"]), default="resnet1d",
              show_default=True)
@click.option("--loss", type=click.Choice(["bce", "clip", "triplet"]), default="clip",
              show_default=True)
@click.option("--min-positives", default=5, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--bootstrap", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--results", default="docs/results.md", show_default=True,
              help="Markdown file whose section this experiment (re)writes.")
@click.option("--label", default="", help="What the data is (heading and section key).")
def experiment(which, ptbxl, cinc, work, text_model, pooling, texts, templates, splits,
               holdout_size, min_val_positives, max_excluded, train_folds, val_folds,
               test_folds, min_macro_positives, control_seeds, epochs, batch_size, arch, loss,
               min_positives, device, bootstrap, seed, results, label):
    """Run Experiment A (held-out PTB-XL classes) or B (Challenge 2021) end to end."""
    from . import experiments as stage

    cfg = stage.ExperimentConfig(work=work, ptbxl=ptbxl, cinc=cinc, text_model=text_model,
                                 pooling=pooling, texts=texts,
                                 templates=tuple(templates) or ("{name}",), splits=splits,
                                 holdout_size=holdout_size,
                                 min_val_positives=min_val_positives, max_excluded=max_excluded,
                                 train_folds=_folds(train_folds), val_folds=_folds(val_folds),
                                 test_folds=_folds(test_folds),
                                 min_macro_positives=min_macro_positives,
                                 control_seeds=control_seeds, epochs=epochs,
                                 batch_size=batch_size, arch=arch, loss=loss,
                                 min_positives=min_positives, device=device,
                                 bootstrap=bootstrap, seed=seed, results=results, label=label)
    result = (stage.run_a if which == "a" else stage.run_b)(cfg)
    click.echo(result["markdown"])
    click.echo(f"(written to {results})")


if __name__ == "__main__":
    main()
