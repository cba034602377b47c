"""Training throughput by torch thread count, on an idle machine and beside other busy jobs.

    python benchmarks/bench_threads.py --shards DIR [--steps 30] [--busy 2] [--settle 5]

Each thread count trains the same preloaded fit for ``--steps`` steps in a fresh process
(``ecgshard --threads N`` sets the count before torch is imported). First on the machine as
it is, then beside ``--busy`` processes that spin on the CPU (other users' jobs), started
``--settle`` seconds before; ``auto`` marks what ``ecgshard`` picks by itself there
(``device.choose_threads``). The ratio is to torch's own default, every core, measured in
the same run.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import parser, shard_set


def spin(stop):
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def throughput(threads, shard_dir, text_file, work, steps, batch_size):
    """samples/s of a preloaded fit in a fresh process, and the threads it used."""
    out = Path(work) / f"fit-threads-{threads}"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    cmd = [sys.executable, "-m", "ecgshard", "-q", "--threads", str(threads), "fit",
           "--shards", str(shard_dir), "--text", str(text_file), "--out", str(out),
           "--epochs", "1", "--max-steps", str(steps), "--batch-size", str(batch_size),
           "--data", "preload", "--device", "cpu", "--no-findings", "--train-folds", "1-7",
           "--val-folds", "8", "--test-folds", "9"]
    subprocess.run(cmd, check=True, env=env)
    log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return log["samples_per_s"]


def main():
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--busy", type=int, default=2, help="spinning processes beside the fit")
    ap.add_argument("--settle", type=float, default=5.0)
    args = ap.parse_args()

    from ecgshard import text
    from ecgshard.device import choose_threads, cpu_budget

    work = Path(args.work)
    shard_dir = shard_set(args)
    text_file = work / "text-minilm.h5"
    if not text_file.exists():
        text.run(text.TextConfig(vocab=(str(shard_dir),), out=str(text_file),
                                 model="minilm-offline"))
    cores = cpu_budget()
    counts = sorted({1, cores})

    def rows(label):
        measured = {n: throughput(n, shard_dir, text_file, work, args.steps, args.batch_size)
                    for n in counts}
        auto, why = choose_threads()
        base = measured[cores]
        print(f"\n{label}: auto picks {auto} ({why})")
        print(f"{'threads':<10}{'samples/s':>11}{'x every core':>14}")
        for n in counts:
            mark = "  <- auto" if n == auto else ""
            print(f"{n:<10}{measured[n]:>11.0f}{measured[n] / base:>14.2f}{mark}")

    print(f"fit throughput by torch threads: resnet1d, batch {args.batch_size}, {args.steps} "
          f"steps, {cores} cores")
    rows("machine as it is")
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(args.settle)
        rows(f"beside {args.busy} busy processes")
    finally:
        stop.set()
        for p in spinners:
            p.join()


if __name__ == "__main__":
    main()
