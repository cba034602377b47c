"""Check `ecgshard build` against real PhysioNet files, independently of its own readers.

    python benchmarks/check_real.py --ptbxl DIR [--cinc DIR] [--work DIR]

PTB-XL: builds from records100 and from records500, then compares every shard record with
``ptbxl_database.csv`` parsed here (labels, likelihoods, strat_fold, patient_id) and with
``wfdb.rdsamp`` of the same record run through a scipy reference of the documented signal path
(resample_poly, sosfiltfilt with the same design, central crop). Challenge 2021: labels against
``#Dx`` read by ``wfdb.rdheader``, signals against ``wfdb.rdsamp`` (which reads the .mat files)
through the same reference. Prints counts, worst differences and skips by reason; exits 1 on
any mismatch.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np


def reference_signal(hea, spec, n_samples, seconds):
    """wfdb.rdsamp + scipy: the documented signal path written independently of ecgshard."""
    import wfdb
    from scipy import signal as sps

    from ecgshard.filters import design
    from ecgshard.shards import LEADS

    sig, fields = wfdb.rdsamp(str(Path(hea).with_suffix("")))
    names = [n.upper() for n in fields["sig_name"]]
    x = np.stack([sig[:, names.index(lead.upper())] for lead in LEADS]).astype(np.float64)
    fs = fields["fs"]
    if x.shape[1] / fs > seconds * 1.5:
        keep = int(round((seconds + 4.0) * fs))
        start = (x.shape[1] - keep) // 2
        x = x[:, start:start + keep]
    if fs != spec.fs:
        from fractions import Fraction

        r = Fraction(spec.fs) / Fraction(fs).limit_denominator(10000)
        x = sps.resample_poly(x, r.numerator, r.denominator, axis=1)
    sos, _, padlen = design(spec.fs, tuple(spec.band), spec.order, spec.notch, spec.notch_q)
    x = sps.sosfiltfilt(sos, x, axis=1, padlen=min(padlen, x.shape[1] - 1))
    if x.shape[1] >= n_samples:
        start = (x.shape[1] - n_samples) // 2
        return x[:, start:start + n_samples]
    return np.pad(x, ((0, 0), (0, n_samples - x.shape[1])))


def signal_difference(hea, sig, cfg):
    """Worst absolute difference relative to the record's amplitude (at least 1 mV)."""
    ref = reference_signal(hea, cfg.signal_path.filter_spec, cfg.n_samples, cfg.seconds)
    return np.abs(sig - ref).max() / max(1.0, np.abs(ref).max())


def _judge(worst, name, problems, tolerance=2e-3):
    if worst > tolerance:
        problems.append(f"{name}: signal differs from the reference by {worst:.2e}")
    return worst


def shard_records(shard_dir):
    from ecgshard import shards

    manifest = shards.load_manifest(shard_dir)
    codes = shards.class_codes(manifest)
    for path in shards.shard_paths(shard_dir, manifest):
        with shards.open_shard(path) as f:
            ids = shards.read_strings(f[shards.RECORD_ID])
            pids = shards.read_strings(f[shards.PATIENT_ID])
            for i, rec in enumerate(ids):
                yield manifest, codes, {"record_id": rec, "patient_id": pids[i],
                                        "signal": f[shards.SIGNAL][i].astype(np.float64),
                                        "labels": f[shards.LABELS][i],
                                        "likelihood": f[shards.LIKELIHOOD][i],
                                        "fold": int(f[shards.FOLD][i])}


def check_ptbxl(src, work, rate, problems):
    import pandas as pd

    from ecgshard import build

    out = work / f"ptbxl-{rate}"
    cfg = build.BuildConfig(source_dir=str(src), out_dir=str(out), ptbxl_rate=str(rate))
    build.run(cfg)
    db = pd.read_csv(Path(src) / "ptbxl_database.csv", index_col="ecg_id")
    worst, n = 0.0, 0
    for manifest, codes, r in shard_records(out):
        row = db.loc[int(r["record_id"])]
        want = ast.literal_eval(row["scp_codes"])
        got = {codes[j]: int(r["likelihood"][j]) for j in np.flatnonzero(r["labels"])}
        if got != {k: int(round(v)) for k, v in want.items()}:
            problems.append(f"PTB-XL {r['record_id']}: labels {got} != csv {want}")
        if r["fold"] != int(row["strat_fold"]) or r["patient_id"] != str(int(row["patient_id"])):
            problems.append(f"PTB-XL {r['record_id']}: fold/patient differ from the csv")
        column = "filename_lr" if rate == 100 else "filename_hr"
        worst = max(worst, signal_difference(Path(src) / f"{row[column]}.hea", r["signal"], cfg))
        n += 1
    return manifest, n, _judge(worst, f"PTB-XL records{rate}", problems)


def check_cinc(src, work, problems):
    import wfdb

    from ecgshard import build

    out = work / "cinc2021"
    cfg = build.BuildConfig(source_dir=str(src), out_dir=str(out), format="cinc2021")
    build.run(cfg)
    heas = {p.stem: p for p in Path(src).rglob("*.hea")}
    worst, n = 0.0, 0
    for manifest, codes, r in shard_records(out):
        hea = heas[r["record_id"]]
        comments = wfdb.rdheader(str(hea.with_suffix(""))).comments
        dx = next(c.split(":", 1)[1] for c in comments if c.replace(" ", "").startswith("Dx:"))
        want = {c.strip() for c in dx.split(",") if c.strip()}
        got = {codes[j] for j in np.flatnonzero(r["labels"])}
        if got != want:
            problems.append(f"Challenge {r['record_id']}: labels {got} != header {want}")
        worst = max(worst, signal_difference(hea, r["signal"], cfg))
        n += 1
    return manifest, n, _judge(worst, "Challenge", problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptbxl", required=True)
    ap.add_argument("--cinc", default=None)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ecgshard-real"))
    args = ap.parse_args()
    work = Path(args.work)
    problems = []
    results = []
    for rate in (100, 500):
        if (Path(args.ptbxl) / f"records{rate}").is_dir():
            results.append((f"PTB-XL records{rate}",) + check_ptbxl(args.ptbxl, work, rate,
                                                                    problems))
    if args.cinc:
        results.append(("Challenge 2021",) + check_cinc(args.cinc, work, problems))
    for name, manifest, n, worst in results:
        skips = Counter(s["reason"] for s in manifest["skipped"])
        print(f"{name}: {n} records checked, worst relative signal difference {worst:.1e}, "
              f"{manifest['n_skipped']} skipped {dict(skips)}")
        for s in manifest["skipped"]:
            print(f"    skipped {s['record_id']}: {s['reason']} ({s['detail']})")
        if manifest.get("unknown_codes"):
            print(f"    codes not in the SNOMED table: {manifest['unknown_codes']}")
    for p in problems:
        print("MISMATCH", p)
    print("OK" if not problems else f"{len(problems)} mismatches")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
