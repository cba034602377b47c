"""How well ``ecgshard.measure`` agrees with PTB-XL's own statements on real records, and how
it compares with neurokit2's beat-by-beat delineation of lead II.

    python benchmarks/check_measure.py --ptbxl DIR [--rate 100|500] [--limit N] [--neurokit]

Per record: the measurements, and the statements' codes. Agreement with what the statements
imply: 1AVB (or the _AVB subclass) records have PR > 200 ms; CLBBB/CRBBB records QRS >= 120
ms; SBRAD records rate < 60 and STACH > 100; AFIB records irregular RR (CV > 0.1) and no P
waves (the findings' rule); NORM records QRS < 120 and PR 120-200; the QRS shape, ST and T
statements true of the classes they describe (inferior Q waves of IMI, a late upright V1 of
CRBBB...) and false of NORM records. With ``--neurokit``, the
same records measured by ``nk.ecg_delineate(method="dwt")`` on lead II (medians of the
per-beat intervals), and the seconds each method takes per record (a ratio from the same run).
"""
from __future__ import annotations

import argparse
import ast
import time
import warnings
from pathlib import Path

import numpy as np

RULES = (  # (codes, measurement, test, what it says)
    (("1AVB", "_AVB"), "pr", lambda v: v > 200, "PR > 200 ms"),
    (("CLBBB", "CRBBB"), "qrs", lambda v: v >= 120, "QRS >= 120 ms"),
    (("NORM",), "qrs", lambda v: v < 120, "QRS < 120 ms"),
    (("NORM",), "pr", lambda v: (v >= 120) & (v <= 200), "PR 120-200 ms"),
    (("SBRAD",), "heart_rate", lambda v: v < 60, "rate < 60/min"),
    (("STACH",), "heart_rate", lambda v: v > 100, "rate > 100/min"),
    (("AFIB",), "rr_cv", lambda v: v > 0.1, "RR CV > 0.1"),
    (("AFIB",), "no_p_waves", lambda v: v > 0, "no P waves"),
    (("SR",), "p_waves", lambda v: v > 0, "P waves"),
    (("LNGQT",), "qtc", lambda v: v > 460, "QTc > 460 ms"),
    (("NORM",), "qtc", lambda v: v <= 460, "QTc <= 460 ms"),
) + tuple(  # QRS shape, ST and T statements: true of the class, and false of NORM records
    (codes, key, test, f"{says}{suffix}")
    for codes, key, says in (
        (("IMI", "ILMI", "IPLMI", "IPMI"), "q_inferior", "Q II/III/aVF"),
        (("AMI", "ASMI", "ALMI"), "q_anterior", "Q V2-V4"),
        (("CRBBB",), "late_up_v1", "late up V1"),
        (("CRBBB",), "late_down_lateral", "late down I+V6"),
        (("CLBBB",), "st_down_lateral", "ST down lateral"),
        (("CLBBB",), "t_negative_lateral", "T neg lateral"),
        (("ISC_", "ISCAL", "ISCLA"), "t_negative_lateral", "T neg lateral"),
        (("ISCI", "ISCIN", "ISCIL"), "t_negative_inferior", "T neg inferior"),
        (("LVH",), "st_down_lateral", "ST down lateral"))
    for codes, test, suffix in ((codes, lambda v: v > 0, ""),
                                (("NORM",), lambda v: v == 0, " (none)")))


def records(root, rate, limit):
    import pandas as pd

    db = pd.read_csv(Path(root) / "ptbxl_database.csv", index_col="ecg_id")
    column = "filename_lr" if rate == 100 else "filename_hr"
    rows = db.head(limit) if limit else db
    for ecg_id, row in rows.iterrows():
        yield ecg_id, Path(root) / row[column], set(ast.literal_eval(row["scp_codes"]))


def read(path):
    import wfdb

    from ecgshard.shards import LEADS

    sig, fields = wfdb.rdsamp(str(path))
    names = [n.upper() for n in fields["sig_name"]]
    return np.stack([sig[:, names.index(lead.upper())] for lead in LEADS]), fields["fs"]


def neurokit_lead_ii(x, fs):
    """Medians over beats of nk's dwt delineation of lead II: PR, QRS, QT in ms."""
    import neurokit2 as nk

    lead = nk.ecg_clean(x[1], sampling_rate=int(fs))
    peaks = nk.ecg_findpeaks(lead, sampling_rate=int(fs))["ECG_R_Peaks"]
    _, waves = nk.ecg_delineate(lead, peaks, sampling_rate=int(fs), method="dwt")

    def span(a, b):
        d = np.asarray(waves[b], float) - np.asarray(waves[a], float)
        return float(np.nanmedian(d)) * 1000 / fs if np.isfinite(d).any() else np.nan

    return {"pr": span("ECG_P_Onsets", "ECG_R_Onsets"),
            "qrs": span("ECG_R_Onsets", "ECG_R_Offsets"),
            "qt": span("ECG_R_Onsets", "ECG_T_Offsets")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptbxl", required=True)
    ap.add_argument("--rate", type=int, default=100, choices=(100, 500))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--neurokit", action="store_true")
    args = ap.parse_args()

    from ecgshard import measure

    warnings.simplefilter("ignore")
    rows, codes, nk_rows, seconds = [], [], [], {"ecgshard": 0.0, "neurokit2": 0.0}
    for _, path, statements in records(args.ptbxl, args.rate, args.limit):
        x, fs = read(path)
        t0 = time.perf_counter()
        values, _ = measure.measure(x, fs)
        seconds["ecgshard"] += time.perf_counter() - t0
        rows.append(values)
        codes.append(statements)
        if args.neurokit:
            t0 = time.perf_counter()
            try:
                nk_rows.append(neurokit_lead_ii(x, fs))
            except Exception:                       # nk raises on records it cannot delineate
                nk_rows.append({"pr": np.nan, "qrs": np.nan, "qt": np.nan})
            seconds["neurokit2"] += time.perf_counter() - t0
    values = np.asarray(rows)
    n = len(rows)
    print(f"{n} records of {args.ptbxl} at {args.rate} Hz")
    print(f"seconds per record: ecgshard.measure {seconds['ecgshard'] / n * 1000:.1f} ms"
          + (f", neurokit2 dwt lead II {seconds['neurokit2'] / n * 1000:.1f} ms (ratio "
             f"{seconds['neurokit2'] / seconds['ecgshard']:.2f})" if args.neurokit else ""))
    nan_share = np.isnan(values).mean(axis=0)
    print("not measurable: " + ", ".join(f"{name} {share:.1%}" for name, share in
                                          zip(measure.NAMES, nan_share) if share > 0))
    print(f"{'statement':>12}  {'rule':<16} {'n':>5}  {'ecgshard':>9}  "
          + ("neurokit2" if args.neurokit else ""))
    for wanted, name, test, says in RULES:
        has = np.array([bool(set(wanted) & c) for c in codes])
        if not has.any():
            continue
        v = values[has, measure.INDEX[name]] if name in measure.INDEX else \
            _finding(values[has], name)
        line = (f"{'/'.join(wanted):>12}  {says:<16} {has.sum():5d}  "
                f"{_agreement(v, test)}")
        if args.neurokit and name in ("pr", "qrs"):
            line += f"  {_agreement(np.array([r[name] for r, h in zip(nk_rows, has) if h]), test)}"
        print(line)
    print("medians (IQR) by statement:")
    for code in ("NORM", "SR", "SBRAD", "STACH", "AFIB", "1AVB", "_AVB", "CLBBB", "CRBBB",
                 "LAFB", "LAFB/LPFB", "LNGQT", "PVC", "PAC"):
        has = np.array([code in c for c in codes])
        if has.sum() < 3:
            continue
        parts = []
        for name in ("heart_rate", "rr_cv", "p_wave_ratio", "pr", "qrs", "qtc", "qrs_axis",
                     "premature_beats", "aberrant_beats"):
            q = np.nanpercentile(values[has, measure.INDEX[name]], [25, 50, 75])
            parts.append(f"{name} {q[1]:.3g} ({q[0]:.3g}-{q[2]:.3g})")
        print(f"  {code} n={has.sum()}: " + "; ".join(parts))


def _finding(values, key):
    """A measured finding's rule (ecgshard.findings) as 1/0, NaN where not measurable."""
    from ecgshard import findings, measure

    rule = findings.BY_CODE[findings.PREFIX + key]
    measured = {n: values[:, measure.INDEX[n]] for n in rule.needs}
    known = np.all([np.isfinite(v) for v in measured.values()], axis=0)
    return np.where(known, findings.labels(measured, [rule.code])[:, 0], np.nan)


def _agreement(v, test):
    measured = np.isfinite(v)
    if not measured.any():
        return "      n/a"
    return f"{test(v[measured]).mean():8.1%} of {measured.sum()}"


if __name__ == "__main__":
    main()
