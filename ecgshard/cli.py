"""Command line: parse options, build a config, call the stage's ``run``. No logic here."""
from __future__ import annotations

import logging
import sys

import click

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


def _floats(text):
    return tuple(float(x) for x in text.replace(",", " ").split()) if text else None


@main.command()
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["ptbxl", "cinc2021"]), required=True)
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
def build(source_dir, fmt, out, fs, seconds, min_seconds, band, no_band, notch, normalize,
          workers, shard_size, min_likelihood, ptbxl_rate, dx_map, compression, limit):
    """Read raw records and write HDF5 shards and a manifest."""
    from . import build as stage

    cfg = stage.BuildConfig(source_dir=source_dir, out_dir=out, format=fmt, fs=fs,
                            seconds=seconds, min_seconds=min_seconds,
                            band=None if no_band else band, notch=notch, normalize=normalize,
                            workers=workers, shard_size=shard_size,
                            min_likelihood=min_likelihood, ptbxl_rate=ptbxl_rate,
                            dx_map=dx_map, compression=compression, limit=limit)
    manifest = stage.run(cfg)
    for line in stage.summary_lines(manifest):
        click.echo(line)


@main.command()
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
def inspect(shard_dir):
    """Print a shard directory's manifest summary."""
    from . import build as stage

    for line in stage.inspect(shard_dir):
        click.echo(line)


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["ptbxl", "cinc2021"]), required=True)
@click.option("-n", "--records", default=500, show_default=True,
              help="PTB-XL: records; Challenge: records per source.")
@click.option("--seed", default=0, show_default=True)
def synth(out_dir, fmt, records, seed):
    """Write deterministic synthetic records in the PTB-XL or Challenge 2021 layout."""
    from . import synth as stage

    if fmt == "ptbxl":
        rows = stage.write_ptbxl(out_dir, n_records=records, seed=seed)
    else:
        rows = stage.write_cinc2021(out_dir, n_per_source=records, seed=seed)
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


if __name__ == "__main__":
    main()
