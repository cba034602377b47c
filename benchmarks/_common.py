"""What the benchmarks share: the PTB-XL-sized synthetic tree and its shard set."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def parser(doc):
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shards", default=None, help="an existing shard directory to read")
    ap.add_argument("--records", type=int, default=21799, help="size of the synthetic set")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ecgshard-bench"))
    ap.add_argument("--batch-size", type=int, default=128)
    return ap


def synthetic_tree(work, records):
    """A PTB-XL-shaped tree of ``records`` synthetic records at 100 Hz (made once, reused)."""
    from ecgshard import synth

    tree = Path(work) / f"ptbxl-{records}"
    if not (tree / "ptbxl_database.csv").exists():
        synth.write_ptbxl(tree, n_records=records, rates=(100,), seed=0)
    return tree


def shard_set(args):
    """``--shards``, or the shards of the synthetic tree (built once, reused)."""
    from ecgshard import build, shards

    shard_dir = Path(args.shards) if args.shards else Path(args.work) / f"shards-{args.records}"
    if not (shard_dir / shards.MANIFEST).exists():
        tree = synthetic_tree(args.work, args.records)
        build.run(build.BuildConfig(source_dir=str(tree), out_dir=str(shard_dir)))
    return shard_dir
