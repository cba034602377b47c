"""Measurements of one 12-lead record: rate, rhythm, intervals, axis, voltage, and the shape of
the QRS, ST segment and T wave in each lead.

What a cardiologist reads off a tracing before naming a diagnosis, measured in millivolts and
milliseconds before any normalisation, so that z-scored shards still carry voltage. R peaks
come from neurokit2 (``ecg_findpeaks``, its default detector); everything else is read off a
**median beat** of all 12 leads, as the interval programs of ECG carts do: neurokit2's
beat-by-beat delineation of one lead (``ecg_delineate``, dwt) was measured against it on
real PTB-XL records and is several times slower and far less accurate on the QRS
(``benchmarks/check_measure.py``; the figures are in ``docs/findings.md``).

Contract: ``measure(sig, fs) -> (values, reasons)``: ``values`` float32 ``(len(NAMES),)``
in ``UNITS``, NaN where not measurable; ``reasons`` maps the name of each NaN to why
(``too_few_beats``, ``no_p_wave``, ``no_t_wave``...). ``VERSION`` changes whenever a
definition does; shards record it (``shards.MEASUREMENTS``).
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np

from .filters import FilterSpec, fit_length, preprocess
from .shards import LEADS

log = logging.getLogger(__name__)

VERSION = 3
FS = 500.0                              # Hz: every record is measured at this rate
BAND = (0.5, 40.0)                      # Hz, before delineation (as the shards' default path)

# (name, unit, definition): the definitions docs/findings.md states
QUANTITIES = (
    ("z_scored_source", "1", "1 when every lead of the record as read has mean 0 and SD 1 "
                             "(within Z_SCORED_TOLERANCE): its voltages are z-units, not mV"),
    ("heart_rate", "1/min", "60 / mean RR interval"),
    ("rr_cv", "1", "SD / mean of the RR intervals"),
    ("rr_rmssd", "ms", "root mean square of successive RR differences"),
    ("n_beats", "count", "R peaks detected"),
    ("premature_beats", "count", "beats after an RR below 80% of the median RR"),
    ("aberrant_beats", "count", "beats whose QRS correlates below 0.8 with the median beat's"),
    ("p_wave_ratio", "1", "P-wave to QRS peak spatial amplitude in the median beat"),
    ("p_wave_consistency", "1", "median correlation of each beat's P-wave window with the "
                                "median beat's"),
    ("pr", "ms", "P onset to QRS onset"),
    ("qrs", "ms", "QRS onset to offset over all 12 leads"),
    ("qt", "ms", "QRS onset to T end (tangent)"),
    ("qtc", "ms", "QT / sqrt(mean RR in s) (Bazett)"),
    ("qrs_axis", "deg", "frontal axis of the net QRS areas of I and aVF"),
    ("sokolow_lyon", "mV", "S depth in V1 + the larger R of V5, V6"),
)
# (kind, unit, definition) of each lead's own measurements, named "<kind>_<lead>"
PER_LEAD = (
    ("qrs_amplitude", "mV", "QRS peak to peak"),
    ("q", "ms", "initial negative QRS deflection: QRS onset to its return to baseline (0: the "
                "QRS starts upright)"),
    ("q_depth", "mV", "depth of that deflection"),
    ("qrs_terminal", "mV", "mean of the last 40 ms of the QRS"),
    ("st", "mV", "ST level 60 ms after the QRS end (40 ms above 100 per minute)"),
    ("t", "mV", "T wave at the peak of the spatial T wave"),
)
QUANTITIES += tuple((f"{kind}_{lead}", unit, f"{definition}, in {lead}")
                    for kind, unit, definition in PER_LEAD for lead in LEADS)
NAMES = tuple(q[0] for q in QUANTITIES)
FLAGS = ("z_scored_source",)            # 0/1 of the record as a whole, told without a beat
UNITS = {q[0]: q[1] for q in QUANTITIES}
INDEX = {name: i for i, name in enumerate(NAMES)}

MIN_BEATS = 4
PREMATURE_RR = 0.8                      # of the median RR
ABERRANT_CORRELATION = 0.8
P_WAVE_MIN_RATIO = 0.04                 # below either: no P wave (docs/findings.md)
P_WAVE_MIN_CONSISTENCY = 0.8
P_ONSET_THRESHOLD = 0.25                # of the P wave's peak spatial velocity above its floor
P_ONSET_QUIET = 0.02                    # s below it before the P wave
QRS_THRESHOLD = 0.08                    # of the QRS peak spatial velocity above its floor
QRS_QUIET = 0.012                       # s below the threshold that end the QRS
Q_START = 0.1                           # of the lead's QRS peak to peak: its first deflection
TERMINAL = 0.04                         # s: the end of the QRS read for its late forces
# A millivolt lead's SD is about 0.05 to 0.5; twelve leads all within 5% of 1 with mean 0 is
# a per-lead z-scored source (measured over the central seconds kept, so not exactly 0 and 1).
Z_SCORED_TOLERANCE = 0.05


def measure_record(sig, fs, leads, seconds, where=""):
    """A raw record as a reader returns it (``(L, T)`` mV, its lead names) measured over the
    central ``seconds`` the shards keep: what ``build`` stores beside the processed signal."""
    from .readers import to_canonical_leads

    x = to_canonical_leads(sig, leads, where, [])
    keep = int(round(seconds * fs))
    if x.shape[1] > keep:       # a shorter record is measured as it is, never padded
        x, _ = fit_length(x, keep)
    try:
        return measure(x, fs)
    except Exception as exc:    # a measurement must never cost the record its place
        log.warning("%s: not measurable (%s: %s)", where, type(exc).__name__, exc)
        return np.full(len(NAMES), np.nan, np.float32), \
            {name: f"failed_{type(exc).__name__}" for name in NAMES}


def count_reasons(reasons_per_record):
    """``{name: {reason: records}}`` over the records' ``reasons`` dicts (the manifest's
    counts of what was not measurable, and why)."""
    counts = {}
    for reasons in reasons_per_record:
        for name, reason in reasons.items():
            by = counts.setdefault(name, {})
            by[reason] = by.get(reason, 0) + 1
    return counts


def measure(sig, fs):
    """``sig``: (12, T) millivolts in ``LEADS`` order at ``fs`` Hz. Returns ``(values,
    reasons)`` (module docstring)."""
    values = np.full(len(NAMES), np.nan, np.float32)
    reasons = {}
    values[INDEX["z_scored_source"]] = _z_scored(sig)
    x = preprocess(sig, fs, FilterSpec(fs=FS, band=BAND, normalize="mv")).astype(np.float64)
    peaks = _r_peaks(x)
    values[INDEX["n_beats"]] = len(peaks)
    if len(peaks) < MIN_BEATS:
        for name in NAMES:
            if name not in ("n_beats",) + FLAGS:
                reasons[name] = "too_few_beats"
        return values, reasons
    rr = np.diff(peaks) / FS
    values[INDEX["heart_rate"]] = 60.0 / rr.mean()
    values[INDEX["rr_cv"]] = rr.std() / rr.mean()
    values[INDEX["rr_rmssd"]] = 1000.0 * math.sqrt(np.mean(np.diff(rr) ** 2)) \
        if len(rr) > 1 else np.nan
    premature = np.r_[False, rr < PREMATURE_RR * np.median(rr)]
    values[INDEX["premature_beats"]] = premature.sum()

    beat = _MedianBeat(x, peaks, float(np.median(rr)), premature)
    values[INDEX["aberrant_beats"]] = beat.n_aberrant
    _delineate(beat, float(rr.mean()), values, reasons)
    return values, reasons


def _z_scored(sig):
    """1.0 for a record z-scored per lead before it reached us (every lead mean 0, SD 1),
    whose amplitudes are z-units however its header names them, else 0.0. A lead that is
    missing (flat or NaN) says nothing either way; one lead at SD 1 alone could be chance."""
    sig = np.asarray(sig, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)         # an all-NaN lead
        mean, sd = np.nanmean(sig, axis=1), np.nanstd(sig, axis=1)
    live = sd > 0
    return float(live.sum() >= 2 and np.all(np.abs(mean[live]) < Z_SCORED_TOLERANCE)
                 and np.all(np.abs(sd[live] - 1.0) < Z_SCORED_TOLERANCE))


def _r_peaks(x):
    """R peaks (sample indices) on the first principal component of the 12 leads: whatever
    the axis, it carries the QRS where a single lead (II at -30 degrees) may not."""
    import neurokit2 as nk

    centred = x - x.mean(axis=1, keepdims=True)
    # the leading eigenvector of the 12 x 12 covariance: an SVD of the whole record gives the
    # same component at 20 times the cost
    _, vectors = np.linalg.eigh(centred @ centred.T)
    component = vectors[:, -1] @ centred
    component = component if component.max() >= -component.min() else -component
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            peaks = nk.ecg_findpeaks(component, sampling_rate=int(FS))["ECG_R_Peaks"]
        except (ValueError, IndexError):
            return np.zeros(0, np.int64)
    peaks = np.asarray(peaks, np.int64)
    # a "beat" in the filters' edge transient or in noise is far smaller than the rest
    margin = int(0.1 * FS)
    peaks = peaks[(peaks >= margin) & (peaks < len(component) - margin)]
    height = np.abs(component[peaks])
    return peaks[height >= 0.3 * np.median(height)] if len(peaks) else peaks


class _MedianBeat:
    """The median over the dominant beats (not premature, QRS shaped like the rest) of every
    lead, in a window around the R peak; ``r`` is the R peak's index in it."""

    def __init__(self, x, peaks, median_rr, premature):
        self.pre = int(min(0.45, 0.75 * median_rr) * FS)
        self.post = int(min(0.65, 1.0 * median_rr) * FS)
        inside = (peaks - self.pre >= 0) & (peaks + self.post <= x.shape[1])
        beats = np.stack([x[:, p - self.pre:p + self.post] for p in peaks[inside]]) \
            if inside.any() else np.zeros((0, x.shape[0], self.pre + self.post))
        qrs = slice(self.pre - int(0.06 * FS), self.pre + int(0.08 * FS))
        template = np.median(beats, axis=0)[:, qrs].ravel() if len(beats) else None
        aberrant = np.array([_correlation(b[:, qrs].ravel(), template) < ABERRANT_CORRELATION
                             for b in beats], bool)
        self.n_aberrant = int(aberrant.sum())
        dominant = ~aberrant & ~premature[inside]
        use = beats[dominant] if dominant.sum() >= 3 else beats
        self.beats = use
        self.leads = np.median(use, axis=0) if len(use) else None
        self.r = self.pre
        self.median_rr = median_rr


def _correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else 0.0


def _smooth(v, ms):
    k = max(1, int(ms * FS / 1000))
    return np.convolve(v, np.ones(k) / k, mode="same")


def _delineate(beat, mean_rr, values, reasons):
    """QRS onset and offset from the spatial velocity of the median beat; P and T from its
    spatial amplitude about the isoelectric level at QRS onset."""
    m = beat.leads
    if m is None:
        for name in NAMES[INDEX["aberrant_beats"] + 1:]:
            reasons[name] = "no_complete_beat"
        return
    velocity = _smooth(np.sqrt((np.diff(m, axis=1) ** 2).sum(axis=0)) * FS, 8)
    near = slice(beat.r - int(0.06 * FS), beat.r + int(0.06 * FS))
    top = near.start + int(np.argmax(velocity[near]))
    floor = np.percentile(velocity, 10)
    threshold = floor + QRS_THRESHOLD * (velocity[top] - floor)
    quiet = max(1, int(QRS_QUIET * FS))
    onset = _quiet_run(velocity, top, -1, threshold, quiet)
    offset = _quiet_run(velocity, top, +1, threshold, quiet)
    if onset is None or offset is None:
        for name in NAMES[INDEX["p_wave_ratio"]:]:
            reasons[name] = "no_qrs_boundary"
        return
    values[INDEX["qrs"]] = (offset - onset) * 1000 / FS
    base = m[:, onset][:, None]
    centred = m - base
    amplitude = np.sqrt((centred ** 2).sum(axis=0))
    qrs_peak = amplitude[onset:offset + 1].max()

    area = centred[:, onset:offset + 1].sum(axis=1)
    lead = {name: i for i, name in enumerate(LEADS)}
    values[INDEX["qrs_axis"]] = math.degrees(math.atan2(2 / math.sqrt(3) * area[lead["aVF"]],
                                                        area[lead["I"]]))
    window = centred[:, onset:offset + 1]
    for name, i in lead.items():
        values[INDEX[f"qrs_amplitude_{name}"]] = np.ptp(window[i])
    values[INDEX["sokolow_lyon"]] = max(0.0, -window[lead["V1"]].min()) + \
        max(0.0, window[lead["V5"]].max(), window[lead["V6"]].max())

    for name, i in lead.items():
        _q_wave(window[i], name, values)
        values[INDEX[f"qrs_terminal_{name}"]] = window[i, -int(TERMINAL * FS):].mean()

    _p_wave(beat, amplitude, velocity, onset, qrs_peak, values, reasons)
    t_peak = _t_wave(amplitude, offset, onset, beat, mean_rr, values, reasons)
    _st_t(centred, offset, t_peak, mean_rr, values, reasons)


def _q_wave(qrs, lead, values):
    """The lead's initial deflection, if negative: its duration and depth. The QRS onset is
    the earliest over all leads, so a lead still flat there waits for its first deflection."""
    start = np.flatnonzero(np.abs(qrs) > Q_START * np.ptp(qrs))
    if not len(start) or qrs[start[0]] > 0:
        values[INDEX[f"q_{lead}"]] = values[INDEX[f"q_depth_{lead}"]] = 0.0
        return
    back = np.flatnonzero(qrs[start[0]:] >= 0)
    end = start[0] + back[0] if len(back) else len(qrs)
    values[INDEX[f"q_{lead}"]] = end * 1000 / FS
    values[INDEX[f"q_depth_{lead}"]] = -qrs[:end].min()


def _st_t(centred, offset, t_peak, mean_rr, values, reasons):
    """ST level and T amplitude per lead, about the isoelectric level at the QRS onset."""
    after = int((0.04 if mean_rr < 0.6 else 0.06) * FS)
    at = offset + after if t_peak is None else min(offset + after, (offset + t_peak) // 2)
    half = int(0.008 * FS)
    for i, name in enumerate(LEADS):
        values[INDEX[f"st_{name}"]] = centred[i, max(offset, at - half):at + half + 1].mean()
        if t_peak is None:
            reasons[f"t_{name}"] = reasons.get("qt", "no_t_wave")
        else:
            values[INDEX[f"t_{name}"]] = centred[i, t_peak]


def _quiet_run(v, start, step, threshold, quiet):
    """The first index from ``start`` in direction ``step`` where ``v`` stays below
    ``threshold`` for ``quiet`` samples (the QRS boundary), or None at the window's edge."""
    i, run = start, 0
    while 0 <= i < len(v):
        run = run + 1 if v[i] < threshold else 0
        if run == quiet:
            return i - step * (quiet - 1)
        i += step
    return None


def _p_wave(beat, amplitude, velocity, onset, qrs_peak, values, reasons):
    # from 400 ms before the QRS (a PR of 400 ms is a long first-degree block), at fast rates
    # from 60% of an RR back
    lo = max(0, onset - int(0.40 * FS), beat.r - int(0.6 * beat.median_rr * FS))
    hi = onset - int(0.03 * FS)
    if hi - lo < int(0.06 * FS):
        for name in ("p_wave_ratio", "p_wave_consistency", "pr"):
            reasons[name] = "no_room_before_qrs"
        return
    # where most P waves lie, and least of the previous T wave
    near = slice(max(lo, onset - int(0.25 * FS)), hi)
    values[INDEX["p_wave_consistency"]] = np.median(
        [_correlation(b[:, near].ravel(), beat.leads[:, near].ravel()) for b in beat.beats])
    segment = _smooth(amplitude[lo:hi], 20)
    peak = int(np.argmax(segment))
    ratio = segment[peak] / qrs_peak if qrs_peak > 0 else 0.0
    values[INDEX["p_wave_ratio"]] = ratio
    if ratio < P_WAVE_MIN_RATIO or values[INDEX["p_wave_consistency"]] < P_WAVE_MIN_CONSISTENCY:
        reasons["pr"] = "no_p_wave"
        return
    # the onset: walking back from the P wave's steepest point, where its spatial velocity
    # stays low (the PR segment may sit off the TP level, so amplitude cannot say)
    speed = _smooth(velocity[lo:hi], 16)
    floor = np.percentile(speed, 10)
    # the P wave is the last strong activity before the QRS; the window may begin on the
    # previous T wave's tail, which can be steeper
    rises = np.flatnonzero((speed[1:-1] >= speed[:-2]) & (speed[1:-1] > speed[2:])
                           & (speed[1:-1] > floor + 0.5 * (speed.max() - floor))) + 1
    top = int(rises[-1]) if len(rises) else int(np.argmax(speed))
    start = _quiet_run(speed, top, -1, floor + P_ONSET_THRESHOLD * (speed[top] - floor),
                       int(P_ONSET_QUIET * FS))
    if start is None:
        reasons["pr"] = "no_p_onset"
        return
    values[INDEX["pr"]] = (onset - (lo + start)) * 1000 / FS


def _t_wave(amplitude, offset, onset, beat, mean_rr, values, reasons):
    lo = offset + int(0.04 * FS)
    # the T wave ends before 70% of the RR (QT/RR stays below that from 40 to 150 per minute)
    hi = min(len(amplitude) - 1, offset + int(0.55 * FS), beat.r + int(0.7 * beat.median_rr * FS))
    if hi - lo < int(0.1 * FS):
        reasons["qt"] = reasons["qtc"] = "no_room_after_qrs"
        return None
    segment = _smooth(amplitude[lo:hi], 20)
    peak = int(np.argmax(segment))
    slope = np.diff(segment[peak:])
    rising = np.flatnonzero(slope >= 0)
    # the steepest point of the T wave's own descent: up to the first trough after its peak,
    # not a later wave's (the next P wave at fast rates)
    slope = slope[:rising[rising > 0][0]] if (rising > 0).any() else slope
    if len(slope) < 2 or slope.min() >= 0:
        reasons["qt"] = reasons["qtc"] = "no_t_wave"
        return None
    steepest = int(np.argmin(slope))
    # the tangent at the steepest descent meets the isoelectric level: the T end
    end = lo + peak + steepest + segment[peak + steepest] / -slope[steepest]
    values[INDEX["qt"]] = (end - onset) * 1000 / FS
    values[INDEX["qtc"]] = values[INDEX["qt"]] / math.sqrt(mean_rr)
    return lo + peak
