"""Deterministic synthetic 12-lead ECGs in the real on-disk layouts (the embedded demo data).

Each record is built beat by beat from Gaussian P, Q, R, S and T waves with per-lead amplitudes,
and each class changes what a cardiologist would look for: heart rate (SBRAD, STACH), irregular
RR without P waves (AFIB), PR interval (1AVB), QRS width and shape (CLBBB, CRBBB, IRBBB, PVC),
axis (LAFB), voltage (LVOLT, LVH), ST level (ISC_, IMI) and T polarity (INVT). So a model can
learn them, and a class sharing a morphology can be recognised zero-shot from its text.

Two layouts, matching PhysioNet's exactly:

* PTB-XL: ``ptbxl_database.csv``, ``scp_statements.csv``, ``records100/00000/00001_lr.{hea,dat}``
  and ``records500/00000/00001_hr.{hea,dat}`` (format 16, 1000 adu/mV).
* Challenge 2021: ``training/<source>/g1/<record>.{hea,mat}`` (MAT v4 ``val`` int16, header
  ``16+24``) with ``#Age``, ``#Sex``, ``#Dx`` SNOMED CT codes, 500/257/1000 Hz by source.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .shards import LEADS

# code: (description, diagnostic, form, rhythm, class, subclass) — PTB-XL's own statements.
SCP_USED = {
    "NORM": ("normal ECG", 1, 0, 0, "NORM", "NORM"),
    "SR": ("sinus rhythm", 0, 0, 1, "", ""),
    "SBRAD": ("sinus bradycardia", 0, 0, 1, "", ""),
    "STACH": ("sinus tachycardia", 0, 0, 1, "", ""),
    "AFIB": ("atrial fibrillation", 0, 0, 1, "", ""),
    "1AVB": ("first degree AV block", 1, 0, 0, "CD", "_AVB"),
    "CLBBB": ("complete left bundle branch block", 1, 0, 0, "CD", "CLBBB"),
    "CRBBB": ("complete right bundle branch block", 1, 0, 0, "CD", "CRBBB"),
    "IRBBB": ("incomplete right bundle branch block", 1, 0, 0, "CD", "IRBBB"),
    "LAFB": ("left anterior fascicular block", 1, 0, 0, "CD", "LAFB/LPFB"),
    "LVH": ("left ventricular hypertrophy", 1, 0, 0, "HYP", "LVH"),
    "LVOLT": ("low QRS voltages in the frontal and horizontal leads", 0, 1, 0, "", ""),
    "ISC_": ("non-specific ischemic", 1, 0, 0, "STTC", "ISC_"),
    "IMI": ("inferior myocardial infarction", 1, 0, 0, "MI", "IMI"),
    "PVC": ("ventricular premature complex", 0, 1, 0, "", ""),
    "INVT": ("inverted T-waves", 0, 1, 0, "", ""),
}
RHYTHMS = (("SR", 0.62), ("SBRAD", 0.13), ("STACH", 0.13), ("AFIB", 0.12))
MORPHOLOGIES = (("1AVB", 0.08), ("CLBBB", 0.07), ("CRBBB", 0.07), ("IRBBB", 0.07),
                ("LAFB", 0.08), ("LVH", 0.08), ("LVOLT", 0.07), ("ISC_", 0.08), ("IMI", 0.08),
                ("PVC", 0.08), ("INVT", 0.07))
_EXCLUSIVE = ({"CLBBB", "CRBBB", "IRBBB"}, {"CLBBB", "LAFB"}, {"LVH", "LVOLT"})

# SCP -> SNOMED codes used when the same records are written in the Challenge layout. Where
# the Challenge has two codes for one concept, both occur, as in the real data.
SCP_TO_SNOMED = {
    "SR": ("426783006",), "SBRAD": ("426177001",), "STACH": ("427084000",),
    "AFIB": ("164889003",), "1AVB": ("270492004",), "CLBBB": ("164909002", "733534002"),
    "CRBBB": ("59118001", "713427006"), "IRBBB": ("713426002",), "LAFB": ("445118002",),
    "LVH": ("164873001",), "LVOLT": ("251146004",), "ISC_": ("164861001",),
    "IMI": ("164865005",), "PVC": ("427172004", "17338001"), "INVT": ("59931005",),
}
# Challenge sources: (directory, record prefix, first number, fs, seconds range)
CINC_SOURCES = (
    ("cpsc_2018", "A", 1, 500, (8, 20)),
    ("georgia", "E", 1, 500, (10, 10)),
    ("ningbo", "JS", 10647, 500, (10, 10)),
    ("st_petersburg_incart", "I", 1, 257, (30, 30)),
    ("ptb", "S", 1, 1000, (12, 30)),
    ("ptb-xl", "HR", 1, 500, (10, 10)),     # PTB-XL records inside the Challenge collection
)

_I, _II, _III, _AVR, _AVL, _AVF, _V1, _V2, _V3, _V4, _V5, _V6 = range(12)
# Normal per-lead wave amplitudes in mV, leads in LEADS order.
_P = np.array([.10, .15, .05, -.12, .03, .10, .05, .08, .08, .08, .08, .08])
_Q = np.array([-.05, -.05, 0, 0, -.05, 0, 0, 0, 0, 0, -.08, -.08])
_R = np.array([.60, 1.0, .40, -.70, .25, .70, .20, .40, .70, 1.2, 1.3, 1.0])
_S = np.array([-.10, -.20, -.20, .10, -.10, -.15, -1.0, -1.4, -.90, -.50, -.20, -.10])
_T = np.array([.20, .30, .10, -.25, .10, .20, -.05, .30, .40, .40, .30, .25])


@dataclass
class _Beat:
    rr: float = 0.8
    pr: float = 0.16
    qrs: float = 0.09
    p: np.ndarray = field(default_factory=lambda: _P.copy())
    q: np.ndarray = field(default_factory=lambda: _Q.copy())
    r: np.ndarray = field(default_factory=lambda: _R.copy())
    s: np.ndarray = field(default_factory=lambda: _S.copy())
    t: np.ndarray = field(default_factory=lambda: _T.copy())
    r2: np.ndarray = field(default_factory=lambda: np.zeros(12))   # late R' (RBBB) / notch
    st: np.ndarray = field(default_factory=lambda: np.zeros(12))   # ST-segment shift
    irregular: bool = False
    pvc_every: int = 0


def _morphology(codes, rng):
    b = _Beat(rr=60.0 / rng.uniform(60, 95))
    if "SBRAD" in codes:
        b.rr = 60.0 / rng.uniform(38, 54)
    if "STACH" in codes:
        b.rr = 60.0 / rng.uniform(105, 140)
    if "AFIB" in codes:
        b.rr, b.irregular, b.p = 60.0 / rng.uniform(70, 120), True, np.zeros(12)
    if "1AVB" in codes:
        b.pr = rng.uniform(0.24, 0.32)
    if "CLBBB" in codes:
        b.qrs = rng.uniform(0.14, 0.17)
        b.q[:] = 0
        b.r[[_V1, _V2]] = .08
        b.s[[_V1, _V2, _V3]] = [-1.6, -2.0, -1.4]
        b.r2[[_I, _AVL, _V5, _V6]] = [.5, .4, .9, .8]
        b.t[[_I, _AVL, _V5, _V6]] = -.25
        b.t[[_V1, _V2, _V3]] = .35
    if "CRBBB" in codes or "IRBBB" in codes:
        full = "CRBBB" in codes
        b.qrs = rng.uniform(0.13, 0.15) if full else rng.uniform(0.10, 0.115)
        b.r2[[_V1, _V2]] = [.7, .5] if full else [.3, .2]
        b.s[[_I, _V5, _V6]] = [-.35, -.35, -.4] if full else [-.2, -.2, -.2]
        if full:
            b.t[[_V1, _V2]] = -.2
    if "LAFB" in codes:
        b.r[[_I, _II, _III, _AVL, _AVF]] = [.9, .3, .1, 1.0, .15]
        b.s[[_II, _III, _AVF]] = [-.8, -1.0, -.9]
    if "LVH" in codes:
        b.r[[_I, _AVL, _V5, _V6]] *= 2.4
        b.s[[_V1, _V2]] *= 2.2
        b.st[[_V5, _V6]] = -.08
    if "LVOLT" in codes:
        for wave in (b.q, b.r, b.s, b.r2):
            wave *= 0.3
    if "ISC_" in codes:
        b.st[[_I, _II, _V4, _V5, _V6]] = -.18
    if "IMI" in codes:
        b.q[[_II, _III, _AVF]] = -.45
        b.st[[_II, _III, _AVF]] = .15
        b.t[_III] = -.2
    if "INVT" in codes:
        b.t[[_I, _AVL, _V2, _V3, _V4]] = -np.abs(b.t[[_I, _AVL, _V2, _V3, _V4]]) - .1
    if "PVC" in codes:
        b.pvc_every = int(rng.integers(3, 6))
    return b


def _gauss(t, centres, width):
    # (N,) time, (B,) centres -> (N,) sum of unit Gaussians
    d = t[None, :] - centres[:, None]
    return np.exp(-0.5 * (d / width) ** 2).sum(axis=0)


def synth_signal(codes, fs, seconds, rng):
    """One record ``(12, fs*seconds)`` float64 in mV carrying the morphology of ``codes``."""
    n = int(round(fs * seconds))
    t = np.arange(n) / fs
    b = _morphology(codes, rng)
    # Beat times: regular with mild sinus variability, or irregular for AF.
    peaks, normal_peaks, pvc_peaks, now = [], [], [], rng.uniform(0.1, b.rr)
    k = 0
    while now < seconds + 1:
        k += 1
        if b.pvc_every and k % b.pvc_every == 0:
            pvc_peaks.append(now - 0.35 * b.rr)
        else:
            normal_peaks.append(now)
        peaks.append(now)
        spread = rng.uniform(0.55, 1.45) if b.irregular else rng.normal(1.0, 0.03)
        now += b.rr * spread
    normal = np.asarray(normal_peaks)
    q = b.qrs
    sig = np.zeros((12, n))
    sig += np.outer(b.p, _gauss(t, normal - b.pr + 0.03, 0.022))
    sig += np.outer(b.q, _gauss(t, normal - 0.35 * q, 0.10 * q))
    sig += np.outer(b.r, _gauss(t, normal, 0.13 * q))
    sig += np.outer(b.s, _gauss(t, normal + 0.35 * q, 0.12 * q))
    sig += np.outer(b.r2, _gauss(t, normal + 0.40 * q, 0.12 * q))
    sig += np.outer(b.st, _gauss(t, normal + 0.5 * q + 0.06, 0.04))
    sig += np.outer(b.t, _gauss(t, normal + 0.5 * q + 0.12 + 0.1 * min(b.rr, 1.2), 0.045))
    if pvc_peaks:
        pvc = np.asarray(pvc_peaks)
        wide = -1.1 * np.sign(_R + 1e-3) * np.maximum(np.abs(_R), .5)   # wide, discordant QRS
        sig += np.outer(wide, _gauss(t, pvc, 0.035))
        sig += np.outer(0.35 * np.sign(_R + 1e-3), _gauss(t, pvc + 0.3, 0.06))
    if b.irregular:  # fibrillatory waves
        phase = np.cumsum(rng.normal(2 * np.pi * 6.0 / fs, 0.05, n))
        sig += np.outer([.02, .05, .04, -.03, 0, .04, .06, .03, .01, 0, 0, 0], np.sin(phase))
    # Noise a real recording has, which the build filters must remove or tolerate.
    sig += rng.normal(0, 0.015, (12, n))
    sig += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(0.1, 0.35) * t
                                           + rng.uniform(0, 2 * np.pi, (12, 1)))
    return sig


def sample_codes(rng):
    """One record's SCP statements: one rhythm and zero to two compatible morphologies."""
    names, probs = zip(*RHYTHMS)
    codes = [names[rng.choice(len(names), p=np.asarray(probs) / sum(probs))]]
    for code, prob in MORPHOLOGIES:
        if rng.random() < prob and len(codes) < 3:
            if not any(code in group and group & set(codes) for group in _EXCLUSIVE):
                codes.append(code)
    if len(codes) == 1 and codes[0] == "SR":
        codes.append("NORM")
    return codes


# ---------------------------------------------------------------- writers

def write_fmt16(dat_path, sig, fs, leads, mat=False, comments=()):
    """Write a WFDB record as PhysioNet does: a ``.dat`` (PTB-XL) or a MAT v4 ``.mat``
    (Challenge) of int16 at 1000 adu/mV, with a matching ``.hea``."""
    dat_path = Path(dat_path)
    dat_path.parent.mkdir(parents=True, exist_ok=True)
    digital = np.clip(np.round(sig * 1000.0), -32768, 32767).astype("<i2")   # (12, N)
    n_sig, n = digital.shape
    payload = np.ascontiguousarray(digital.T).tobytes()
    if mat:
        head = np.array([30, n_sig, n, 0, 4], dtype="<i4").tobytes() + b"val\x00"
        dat_path.write_bytes(head + payload)
        fmt, gain = "16+24", "1000/mV"
    else:
        dat_path.write_bytes(payload)
        fmt, gain = "16", "1000.0(0)/mV"
    lines = [f"{dat_path.stem} {n_sig} {fs} {n}"]
    for i, lead in enumerate(leads):
        checksum = int(digital[i].astype(np.int64).sum()) & 0xFFFF
        if mat and checksum >= 32768:
            checksum -= 65536
        lines.append(f"{dat_path.name} {fmt} {gain} 16 0 {int(digital[i, 0])} {checksum} 0 {lead}")
    lines.extend(comments)
    dat_path.with_suffix(".hea").write_text("\n".join(lines) + "\n")


PTBXL_COLUMNS = ("ecg_id", "patient_id", "age", "sex", "height", "weight", "nurse", "site",
                 "device", "recording_date", "report", "scp_codes", "heart_axis",
                 "infarction_stadium1", "infarction_stadium2", "validated_by", "second_opinion",
                 "initial_autogenerated_report", "validated_by_human", "baseline_drift",
                 "static_noise", "burst_noise", "electrodes_problems", "extra_beats",
                 "pacemaker", "strat_fold", "filename_lr", "filename_hr")
SCP_COLUMNS = ("", "description", "diagnostic", "form", "rhythm", "diagnostic_class",
               "diagnostic_subclass", "Statement Category", "SCP-ECG Statement Description",
               "AHA code", "aECG REFID", "CDISC Code", "DICOM Code")


def write_ptbxl(root, n_records=500, seed=0, rates=(100, 500), seconds=10):
    """A PTB-XL 1.0.3-shaped tree of synthetic records; returns the list of rows written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    patient = 10000
    for ecg_id in range(1, n_records + 1):
        if ecg_id == 1 or rng.random() > 0.25:   # about 1.3 records per patient, as in PTB-XL
            patient += 1
        codes = sample_codes(rng)
        # PTB-XL's 100 Hz records are its 500 Hz ones downsampled; without the 500 Hz folder
        # the signal is drawn at 100 Hz directly (5x faster, for PTB-XL-sized benchmarks).
        fs = 500 if 500 in rates else 100
        sig = synth_signal(codes, fs, seconds, rng)
        folder = f"{(ecg_id // 1000) * 1000:05d}"
        lr, hr = f"records100/{folder}/{ecg_id:05d}_lr", f"records500/{folder}/{ecg_id:05d}_hr"
        if 500 in rates:
            write_fmt16(root / f"{hr}.dat", sig, 500, PTBXL_LEAD_NAMES)
        if 100 in rates:
            write_fmt16(root / f"{lr}.dat", sig[:, ::fs // 100], 100, PTBXL_LEAD_NAMES)
        likelihood = {c: (float(rng.choice([50.0, 80.0, 100.0])) if SCP_USED[c][1] else 0.0)
                      for c in codes}
        rows.append({"ecg_id": ecg_id, "patient_id": float(patient),
                     "age": float(rng.integers(18, 90)), "sex": int(rng.integers(0, 2)),
                     "scp_codes": repr(likelihood),
                     "strat_fold": _patient_fold(patient), "filename_lr": lr, "filename_hr": hr})
    write_ptbxl_tables(root, rows)
    return rows


def write_ptbxl_tables(root, rows):
    """PTB-XL's two CSVs: ``ptbxl_database.csv`` with ``rows`` (dicts of its columns) and
    ``scp_statements.csv`` with the statements the synthetic records use."""
    root = Path(root)
    with open(root / "ptbxl_database.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PTBXL_COLUMNS, restval="")
        w.writeheader()
        w.writerows(rows)
    with open(root / "scp_statements.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SCP_COLUMNS)
        for code, (desc, diag, form, rhythm, cls, sub) in SCP_USED.items():
            w.writerow([code, desc, _flag(diag), _flag(form), _flag(rhythm), cls, sub, "", desc,
                        "", "", "", ""])


PTBXL_LEAD_NAMES = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _flag(value):
    return "1.0" if value else ""


def _patient_fold(patient):
    return int(np.random.default_rng(patient).integers(1, 11))


def write_cinc2021(root, n_per_source=60, seed=1, sources=None):
    """A Challenge 2021-shaped tree (``training/<source>/g1``) of synthetic records."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = []
    for directory, prefix, first, fs, (lo, hi) in CINC_SOURCES:
        if sources and directory not in sources:
            continue
        width = 5 if prefix in ("JS", "E", "HR") else 4
        for k in range(n_per_source):
            name = f"{prefix}{first + k:0{width}d}"
            scp = sample_codes(rng)
            snomed = [SCP_TO_SNOMED[c][int(rng.integers(len(SCP_TO_SNOMED[c])))]
                      for c in scp if c in SCP_TO_SNOMED]
            if "SBRAD" in scp and rng.random() < 0.3:
                snomed.append("426627000")            # "bradycardia", a Challenge-only code
            seconds = float(rng.integers(lo, hi + 1))
            sig = synth_signal(scp, fs, seconds, rng)
            space = " " if rng.random() < 0.3 else ""  # real headers mix "#Dx:" and "# Dx:"
            comments = (f"#{space}Age: {int(rng.integers(18, 90))}",
                        f"#{space}Sex: {'Male' if rng.random() < 0.5 else 'Female'}",
                        f"#{space}Dx: {','.join(snomed)}", "#Rx: Unknown", "#Hx: Unknown",
                        "#Sx: Unknown")
            write_fmt16(root / "training" / directory / "g1" / f"{name}.mat", sig, fs, LEADS,
                        mat=True, comments=comments)
            written.append({"record": name, "source": directory, "codes": snomed, "scp": scp})
    (root / "synthetic-truth.json").write_text(json.dumps(written))
    return written


# ---------------------------------------------------------------- MIMIC-IV-ECG

# Machine statements for the synthetic codes, worded as the ECG carts write them.
MIMIC_STATEMENTS = {
    "SR": "Sinus rhythm", "SBRAD": "Sinus bradycardia", "STACH": "Sinus tachycardia",
    "AFIB": "Atrial fibrillation", "1AVB": "1st degree A-V block",
    "CLBBB": "Left bundle branch block", "CRBBB": "Right bundle branch block",
    "IRBBB": "Incomplete right bundle branch block", "LAFB": "Left anterior fascicular block",
    "LVH": "Left ventricular hypertrophy", "LVOLT": "Low QRS voltages in limb leads",
    "ISC_": "Possible myocardial ischemia", "IMI": "Inferior infarct age undetermined",
    "PVC": "Ventricular premature complex", "INVT": "T wave inversion",
}
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


def _cart_measurements(codes, rng):
    """A machine_measurements.csv row's interval columns (ms from the record start) and axes,
    drawn as the codes plant rate, PR and QRS (not the record's own draw: its own generator,
    so the records stay as they were); 29999 where the cart measured nothing."""
    b = _morphology(codes, rng)
    p_onset = int(rng.integers(30, 60))
    qrs_onset = p_onset + int(1000 * b.pr)
    qrs_end = qrs_onset + int(1000 * b.qrs)
    row = {"rr_interval": int(1000 * b.rr), "p_onset": p_onset, "p_end": p_onset + 100,
           "qrs_onset": qrs_onset, "qrs_end": qrs_end, "t_end": qrs_end + 280,
           "p_axis": 55, "qrs_axis": -50 if "LAFB" in codes else 40, "t_axis": 45}
    if "AFIB" in codes:
        row.update(p_onset=29999, p_end=29999, p_axis=29999)
    return row


def write_mimic_iv_ecg(root, n_records=200, seed=3):
    """A MIMIC-IV-ECG-shaped tree of synthetic records with the layout's quirks: leads in the
    carts' order (aVF before aVL), banner statements, statements continued in the next field
    after "--", trailing periods and upper case, a record with a flat lead, a study without a
    machine_measurements row. Returns one dict per record (ids and intended statements)."""
    import pandas as pd

    root = Path(root)
    rng = np.random.default_rng(seed)
    listed, reports, written = [], [], []
    subject = 10000000
    for k in range(n_records):
        if k == 0 or rng.random() > 0.3:            # some subjects have several studies
            subject += int(rng.integers(1, 50))
        study = 40000000 + 7 * k + int(rng.integers(0, 7))
        scp = sample_codes(rng)
        sig = synth_signal(scp, 500, 10, rng)
        if k % 37 == 5:
            sig[4] = 0.0                            # a lead that recorded nothing
        path = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        order = [LEADS.index(lead) for lead in MIMIC_LEADS]
        write_fmt16(root / f"{path}.dat", sig[order], 500, MIMIC_LEADS)
        fields = []
        for code in scp:
            text = MIMIC_STATEMENTS.get(code)
            if text is None:
                continue
            if code == "IMI" and rng.random() < 0.5:
                fields += ["Inferior infarct", "-- age undetermined"]
                continue
            if rng.random() < 0.2:
                text = text.upper()
            fields.append(text + ("." if rng.random() < 0.3 else ""))
        fields.append("--- Normal ECG ---" if "NORM" in scp else "--- Abnormal ECG ---")
        listed.append({"subject_id": subject, "study_id": study, "file_name": study,
                       "ecg_time": "2180-07-23 08:44:00", "path": path})
        if k != 3:                                  # study 4 lost its report row
            reports.append({"subject_id": subject, "study_id": study, "cart_id": 6848296,
                            "ecg_time": "2180-07-23 08:44:00",
                            **{f"report_{i}": fields[i] if i < len(fields) else None
                               for i in range(18)},
                            **_cart_measurements(scp, np.random.default_rng([seed, k]))})
        written.append({"subject_id": subject, "study_id": study, "scp": scp, "fields": fields,
                        "flat_lead": k % 37 == 5, "has_report": k != 3})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(listed).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(reports).to_csv(root / "machine_measurements.csv", index=False)
    return written
