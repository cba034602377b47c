"""Loading throughput: the shard stream feeding a no-op consumer vs. the same arrays in memory.

    python benchmarks/bench_load.py [--shards DIR] [--records 21799] [--batch-size 128]

Without --shards a PTB-XL-sized synthetic shard set is built first (reused when present). The
baseline is a shuffled epoch over one in-memory numpy array (random index gather per batch),
the fastest a loader could hand out the same batches; the stream is ``ecgshard.data``'s
DataLoader path (worker processes, shuffled block order, shuffle buffer), all measured in one run.
"""
from __future__ import annotations

import os
import time

import numpy as np
from _common import parser, shard_set


def main():
    ap = parser(__doc__)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    import torch

    from ecgshard import data, shards

    shard_dir = shard_set(args)
    manifest = shards.load_manifest(shard_dir)
    # What integrity costs: every shard hashed against its manifest checksum, which each
    # process does once (and a later process not at all while the stamps hold).
    t0 = time.perf_counter()
    for path, sha256 in shards.shard_checksums(shard_dir, manifest).items():
        shards.verify_shard(path, sha256, full=True)
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

    def stream_epochs(workers):
        loader = data.StreamLoader(sel, args.batch_size, "cpu", seed=0, workers=workers)
        for epoch in range(args.epochs):
            yield from loader.epoch(epoch)

    rows = [("in-memory numpy array, shuffled gather", consume(memory_epochs()))]
    for workers in (0, 1, 2):
        rows.append((f"shard stream, {workers} loader worker(s)", consume(stream_epochs(workers))))
    base = rows[0][1]
    print(f"\nloading {n} records x 12 x {manifest['n_samples']} float16, batch "
          f"{args.batch_size}, {args.epochs} epochs, {os.cpu_count()} cores")
    print(f"{'':<44}{'rec/s':>10}{'x memory':>10}")
    for name, rate in rows:
        print(f"{name:<44}{rate:>10.0f}{rate / base:>10.2f}")
    print(f"\nchecksum verification of all {len(manifest['shards'])} shards: {verify_s:.2f} s, "
          f"{verify_s / read_s:.2f}x the time of reading every record once ({read_s:.2f} s)")


if __name__ == "__main__":
    main()
