"""Training throughput: the default model with shards streamed vs. the training set preloaded.

    python benchmarks/bench_fit.py [--shards DIR] [--records 21799] [--steps 40] [--device auto]
                                   [--full-epoch]

Same model (resnet1d), loss, batch and steps for both data paths, measured in one run; the
figure of merit is stream / preload samples/s (the data path must not be the bottleneck) and
the fraction of each step spent waiting for data. ``--full-epoch`` also times one whole epoch
of the training folds (1-8) with ``--data auto``. On a GPU the same script measures the CUDA
path with bf16 autocast (``--device cuda``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from _common import parser, shard_set


def main():
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--full-epoch", action="store_true")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    from ecgshard import fit, text

    work = Path(args.work)
    shard_dir = shard_set(args)
    text_file = work / "text-minilm.h5"
    text.run(text.TextConfig(vocab=(str(shard_dir),), out=str(text_file), model="minilm-offline"))

    def one(name, **kw):
        out = work / f"fit-{name}"
        shutil.rmtree(out, ignore_errors=True)
        fit.run(fit.FitConfig(shards=str(shard_dir), text=str(text_file), out=str(out),
                              epochs=1, batch_size=args.batch_size, device=args.device,
                              workers=args.workers, compile=args.compile, **kw))
        log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)
        return log

    # Untimed: the first fit of a process pays for CUDA's context, cuDNN's algorithm search
    # and (with --compile) the compilation, which would be charged to whichever row ran first.
    one("warm-up", data="preload", max_steps=5)
    rows = [("preloaded tensor", one("preload", data="preload", max_steps=args.steps)),
            (f"shard stream, {args.workers} workers", one("stream", data="stream",
                                                          max_steps=args.steps))]
    if args.full_epoch:
        rows.append(("full epoch, --data auto", one("epoch", data="auto")))
    base = rows[0][1]["samples_per_s"]
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                        else "cpu")
    print(f"\nfit throughput: resnet1d, batch {args.batch_size}, device {device}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{'':<34}{'steps':>7}{'samples/s':>11}{'x preload':>11}{'data wait':>11}"
          f"{'seconds':>9}")
    for name, log in rows:
        print(f"{name:<34}{log['step']:>7}{log['samples_per_s']:>11.0f}"
              f"{log['samples_per_s'] / base:>11.2f}{100 * log['data_wait_fraction']:>10.1f}%"
              f"{log['seconds']:>9.1f}")


if __name__ == "__main__":
    main()
