"""Build throughput: `ecgshard build` against a plain per-record loop, measured in one run.

    python benchmarks/bench_build.py [--records 21799] [--tree DIR] [--baseline-records 2000]

The tree is PTB-XL-shaped (records100/, format 16, the two CSVs); without --tree a synthetic one
of --records records is generated (once; reused when present). The baseline is what a user
writes first: `wfdb.rdsamp` + `scipy.signal.resample_poly` + `scipy.signal.filtfilt` per record,
into a numpy array (no HDF5 writing at all, which favours it). It runs on the first
--baseline-records records; both are reported in records/s. The build runs with and without
measurements (``--no-measure``) for their cost as a ratio. Where the time of one record goes
(header, decode, checks, filter, HDF5) is profiled on the same records.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import synthetic_tree


def baseline(paths, fs_out=100, band=(0.5, 40.0)):
    import wfdb
    from scipy import signal as sps

    b, a = sps.butter(2, band, btype="bandpass", fs=fs_out)
    out = np.zeros((len(paths), 12, 10 * fs_out), np.float16)
    for i, p in enumerate(paths):
        sig, fields = wfdb.rdsamp(str(p.with_suffix("")))
        x = sig.T
        if fields["fs"] != fs_out:
            x = sps.resample_poly(x, fs_out, int(fields["fs"]), axis=1)
        x = sps.filtfilt(b, a, x, axis=1)
        out[i] = x[:, :10 * fs_out]
    return out


def profile(paths, spec):
    """Per stage, microseconds a record and share: header, decode (with the WFDB checksums),
    checks (non-finite, flat, amplitude), filter, HDF5 (with fletcher32); and, apart, what the
    two plausibility checks alone cost."""
    from ecgshard import readers, shards, signal
    from ecgshard.filters import fit_length, preprocess

    t = dict.fromkeys(("header", "decode", "checks", "filter", "hdf5"), 0.0)
    alone = {"WFDB checksums": 0.0, "amplitude range": 0.0}
    sigs = []
    for p in paths:
        t0 = time.perf_counter()
        hdr = readers.parse_header(p.read_text())
        t1 = time.perf_counter()
        sig, fs, leads, _, _ = readers.read_wfdb(p)
        t2 = time.perf_counter()
        sig = readers.to_canonical_leads(sig, leads)
        ptp = np.ptp(sig, axis=1)
        ok = np.isfinite(sig).all() and ptp.min() > 1e-3
        signal.check_amplitude(ptp, str(p))
        t3 = time.perf_counter()
        x, _ = fit_length(preprocess(sig, fs, spec), 1000)
        t4 = time.perf_counter()
        sigs.append(x.astype(np.float16))
        t["header"] += t1 - t0
        t["decode"] += (t2 - t1) - (t1 - t0)      # read_wfdb parses the header again
        t["checks"] += t3 - t2
        t["filter"] += t4 - t3
        raw = np.rint(sig * 1000).astype(np.int16)   # the stored samples (gain 1000)
        t5 = time.perf_counter()
        readers._check_checksums(raw, readers.Header("x", 12, fs, raw.shape[1],
                                                     leads=list(leads), checksums=[None] * 12),
                                 p)
        t6 = time.perf_counter()
        signal.check_amplitude(ptp, str(p))
        alone["WFDB checksums"] += t6 - t5
        alone["amplitude range"] += time.perf_counter() - t6
        del hdr, ok
    n = len(sigs)
    arrays = {shards.SIGNAL: np.stack(sigs), shards.LABELS: np.zeros((n, 5), np.uint8),
              shards.LIKELIHOOD: np.zeros((n, 5), np.uint8),
              shards.MENTIONED: np.zeros((n, 5), np.uint8), shards.RECORD_ID: list(range(n)),
              shards.PATIENT_ID: list(range(n)), shards.FOLD: np.ones(n), shards.SOURCE: ["x"] * n,
              shards.AGE: np.zeros(n), shards.SEX: np.zeros(n), shards.LENGTH: np.zeros(n)}
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    shards.write_shard(tmp / "s.h5", arrays, {})
    t["hdf5"] = time.perf_counter() - t0
    shutil.rmtree(tmp)
    total = sum(t.values())
    return {k: (v / n * 1e6, v / total) for k, v in {**t, **alone}.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=21799)
    ap.add_argument("--tree", default=None, help="existing PTB-XL directory to read")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ecgshard-bench"))
    ap.add_argument("--baseline-records", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rate", default="auto", choices=["auto", "100", "500"])
    ap.add_argument("--shard-size", type=int, default=2048,
                    help="records per shard; workers share out whole shards")
    args = ap.parse_args()

    from ecgshard import build
    from ecgshard.databases.ptbxl import load_tables

    work = Path(args.work)
    tree = Path(args.tree) if args.tree else work / f"ptbxl-{args.records}"
    if not args.tree:
        synthetic_tree(work, args.records)
    db, _ = load_tables(tree)
    column = "filename_hr" if args.rate == "500" else "filename_lr"
    paths = [tree / f"{f}.hea" for f in db[column]]
    n_base = min(args.baseline_records, len(paths))

    # warm the page cache and the numba cache so neither side pays for it
    for p in paths:
        p.read_bytes(), p.with_suffix(".dat").read_bytes()
    build.run(build.BuildConfig(source_dir=str(tree), out_dir=str(work / "warm"), limit=50,
                                workers=1, ptbxl_rate=args.rate))

    t0 = time.perf_counter()
    baseline(paths[:n_base])
    base_rate = n_base / (time.perf_counter() - t0)

    rows = [("baseline: wfdb.rdsamp + scipy resample_poly/filtfilt, 1 process", n_base,
             base_rate)]
    measured = {}
    for workers in sorted({1, args.workers}):
        for measure in (False, True):
            out = work / f"shards-w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            m = build.run(build.BuildConfig(source_dir=str(tree), out_dir=str(out),
                                            workers=workers, ptbxl_rate=args.rate,
                                            shard_size=args.shard_size, measure=measure))
            rate = m["n_records"] / (time.perf_counter() - t0)
            measured[workers, measure] = rate
            rows.append((f"ecgshard build, {workers} worker(s), "
                         f"{'with' if measure else 'without'} measurements",
                         m["n_records"], rate))
            shutil.rmtree(out, ignore_errors=True)

    print(f"\nbuild throughput, {len(paths)} records ({tree}), {os.cpu_count()} cores")
    print(f"{'':<72}{'records':>9}{'rec/s':>10}{'x baseline':>12}")
    for name, n, rate in rows:
        print(f"{name:<72}{n:>9}{rate:>10.0f}{rate / base_rate:>12.1f}")
    for workers in sorted({1, args.workers}):
        print(f"measurements cost, {workers} worker(s): build rate with / without = "
              f"{measured[workers, True] / measured[workers, False]:.2f}")
    print("\nwhere one record's time goes (ecgshard, 1 process, first "
          f"{n_base} records):")
    for stage, (us, frac) in profile(paths[:n_base], build.BuildConfig(
            source_dir="", out_dir="").signal_path.filter_spec).items():
        print(f"  {stage:<16}{us:8.0f} us  {100 * frac:5.1f}% of the stages above")


if __name__ == "__main__":
    main()
