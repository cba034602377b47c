"""Loading throughput: the shard stream feeding a no-op consumer vs. the same arrays in memory.

    python benchmarks/bench_load.py [--shards DIR] [--records 21799] [--batch-size 128]
        [--ranks 1,2]

Without --shards a PTB-XL-sized synthetic shard set is built first (reused when present). The
baseline is a shuffled epoch over one in-memory numpy array (random index gather per batch),
the fastest a loader could hand out the same batches; the stream is ``ecgshard.data``'s
DataLoader path (worker processes, shuffled block order, shuffle buffer), all measured in one run.

Then the data path of a data-parallel fit: N processes (``--ranks``), each streaming its own
rank's disjoint blocks for ``--epochs`` epochs of global batches at the same time, with 1 and 2
loader workers each; records/s per rank and in all, against one process in the same run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import parser, shard_set


def main():
    ap = parser(__doc__)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ranks", default="1,2", help="process counts for the per-rank table")
    ap.add_argument("--rank", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank:                                    # a rank process of the per-rank table
        rank, n_ranks, workers, epochs, start_at = args.rank
        _rank(args.shards, args.batch_size, int(rank), int(n_ranks), int(workers),
              int(epochs), float(start_at))
        return

    import torch

    from ecgshard import data, shards

    shard_dir = shard_set(args)
    manifest = shards.load_manifest(shard_dir)
    # What integrity costs: every shard hashed against its manifest checksum, which each
    # process does once (and a later process not at all while the stamps hold).
    t0 = time.perf_counter()
    for path, expected in shards.shard_entries(shard_dir, manifest).items():
        shards.verify_shard(path, expected.sha256, full=True)
    verify_s = time.perf_counter() - t0
    sel = data.Selection(str(shard_dir), tuple(range(1, 11)), tuple(shards.class_codes(manifest)))
    t0 = time.perf_counter()
    arrays = data.load_selection(sel)
    read_s = time.perf_counter() - t0
    n = len(arrays["labels"])

    def consume(batches):
        count, t0 = 0, time.perf_counter()
        for batch in batches:
            count += len(batch["labels"])
        return count / (time.perf_counter() - t0)

    def memory_epochs():
        rng = np.random.default_rng(0)
        for _ in range(args.epochs):
            perm = rng.permutation(n)
            for i in range(0, n - args.batch_size + 1, args.batch_size):
                idx = np.sort(perm[i:i + args.batch_size])
                yield {"signal": torch.from_numpy(arrays["signal"][idx]),
                       "labels": torch.from_numpy(arrays["labels"][idx])}

    def stream_epochs(workers, selection=sel):
        loader = data.StreamLoader(selection, args.batch_size, "cpu", seed=0, workers=workers)
        for epoch in range(args.epochs):
            yield from loader.epoch(epoch)

    rows = [("in-memory numpy array, shuffled gather", consume(memory_epochs()))]
    for workers in (0, 1, 2):
        rows.append((f"shard stream, {workers} loader worker(s)", consume(stream_epochs(workers))))
    # What the per-chunk checksums cost: the same shards rewritten without fletcher32
    bare = without_chunk_checksums(shard_dir, Path(args.work) / f"{shard_dir.name}-bare")
    bare_sel = data.Selection(str(bare), sel.folds, sel.class_codes)
    consume(stream_epochs(0, bare_sel))                  # hash once (stamps), like the other
    rows.append(("shard stream, 0 workers, shards WITHOUT chunk checksums",
                 consume(stream_epochs(0, bare_sel))))
    base = rows[0][1]
    print(f"\nloading {n} records x 12 x {manifest['n_samples']} float16, batch "
          f"{args.batch_size}, {args.epochs} epochs, {os.cpu_count()} cores")
    print(f"{'':<44}{'rec/s':>10}{'x memory':>10}")
    for name, rate in rows:
        print(f"{name:<44}{rate:>10.0f}{rate / base:>10.2f}")
    print(f"\nchecksum verification of all {len(manifest['shards'])} shards: {verify_s:.2f} s, "
          f"{verify_s / read_s:.2f}x the time of reading every record once ({read_s:.2f} s)")

    print(f"\nper rank: each of N processes streams its own blocks, {args.epochs} epochs of "
          f"global batches of {args.batch_size}")
    print(f"{'processes':>10}{'workers':>9}{'rec/s per rank':>16}{'rec/s in all':>14}"
          f"{'x 1 process':>13}")
    for workers in (1, 2):
        base = None
        for n_ranks in (int(r) for r in args.ranks.split(",")):
            per_rank = ranks_rate(shard_dir, args.batch_size, n_ranks, workers, args.epochs)
            if base is None:
                base = sum(per_rank)
            print(f"{n_ranks:>10}{workers:>9}{np.mean(per_rank):>16.0f}{sum(per_rank):>14.0f}"
                  f"{sum(per_rank) / base:>13.2f}")


def without_chunk_checksums(shard_dir, out):
    """A copy of a shard set whose datasets carry no fletcher32 (same chunks and attributes),
    its manifest's hashes updated: the baseline for what the checksums cost (made once)."""
    import json

    import h5py

    from ecgshard import shards

    if (out / shards.MANIFEST).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = shards.load_manifest(shard_dir)
    for entry in manifest["shards"]:
        with h5py.File(shard_dir / entry["file"], "r") as src, \
                h5py.File(out / entry["file"], "w", libver=("v110", "latest")) as dst:
            dst.attrs.update(src.attrs)
            for key, ds in src.items():
                dst.create_dataset(key, data=ds[...], chunks=ds.chunks,
                                   compression=ds.compression)
        entry["sha256"] = shards.sha256_file(out / entry["file"])
    (out / shards.MANIFEST).write_text(json.dumps(manifest))
    return out


def _rank(shard_dir, batch, rank, n_ranks, workers, epochs, start_at):
    """One rank, in its own interpreter as torchrun starts it: stream this rank's share from
    ``start_at`` (a wall-clock time all ranks wait for) and print records/s."""
    from ecgshard import data, shards
    from ecgshard.distributed import World

    manifest = shards.load_manifest(shard_dir)
    sel = data.Selection(shard_dir, tuple(range(1, 11)), tuple(shards.class_codes(manifest)))
    n, _, _ = data.count_selection(sel)
    loader = data.StreamLoader(sel, batch // n_ranks, "cpu", seed=0, workers=workers,
                               world=World(rank=rank, size=n_ranks))
    time.sleep(max(0.0, start_at - time.time()))
    t0, count = time.perf_counter(), 0
    for epoch in range(epochs):
        for b in loader.epoch(epoch, n // batch):
            count += len(b["labels"])
    print(count / (time.perf_counter() - t0))


def ranks_rate(shard_dir, batch, n_ranks, workers, epochs):
    """Records/s of each of ``n_ranks`` processes streaming their shares at the same time."""
    start_at = time.time() + 15                      # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), str(n_ranks),
                               str(workers), str(epochs), str(start_at), "--shards",
                               str(shard_dir), "--batch-size", str(batch)],
                              stdout=subprocess.PIPE, text=True) for r in range(n_ranks)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"rank process failed ({p.returncode})")
        rates.append(float(out.strip().splitlines()[-1]))
    return rates


if __name__ == "__main__":
    main()
