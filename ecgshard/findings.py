"""Measured findings: a small, fixed vocabulary of statements about what was measured on a
record ("heart rate 50 to 59 per minute", "PR interval over 200 ms"), each true or false of a
record by a rule on its measurements (``ecgshard.measure``).

Embedded by the frozen text encoder beside the class texts (``embed-text``) and trained as
extra multi-label targets (``fit --findings``), they tie the words a class definition is
written in — rate, regularity, P waves, intervals, axis, voltage — to the signal, so that an
unseen class's text ("QTc above 460 ms") has trained neighbours that mean what it says.

No statement names a diagnosis (a test checks every statement against every shipped
vocabulary's names and synonyms). Some restate a coded class all the same: "frontal QRS axis
pointing left" *is* left axis deviation (SNOMED 39732003), which the relation table puts near
LAFB. Each statement lists the codes it ``states``; a run counts a trained statement as
training them (``statuses``, ``Run.statuses``), and ``fit`` withholds a statement whose stated
concept is the same as, or related to, a held-out class, so that class stays unseen.
Held-out classes' records stay excluded from training exactly as without findings. A record
whose measurement is NaN is negative for every statement that reads it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

VERSION = 4
PREFIX = "finding:"                     # text-matrix codes: "finding:rate_50_59"

FAMILIES = ("rhythm and rate", "conduction and intervals", "axis", "voltage", "QRS shape",
            "ST segment and T wave")


@dataclass(frozen=True)
class Finding:
    key: str
    text: str
    family: str
    needs: tuple                        # measurement names the rule reads
    rule: object                        # {name: (N,) float} -> (N,) bool (NaN compares False)
    states: tuple = ()                  # class codes whose concept the statement restates

    @property
    def code(self):
        return PREFIX + self.key

    @property
    def quantity(self):
        """What it is a statement about: its first measurement without a lead ("heart_rate",
        "qrs_axis", "st", "q"...). Statements about one quantity partition its range."""
        return re.sub(r"_(I|II|III|aVR|aVL|aVF|V[1-6])$", "", self.needs[0])


def _between(name, lo, hi):
    return lambda m: (m[name] >= lo) & (m[name] < hi)


def _p_waves(m):
    from .measure import P_WAVE_MIN_CONSISTENCY, P_WAVE_MIN_RATIO

    return (m["p_wave_ratio"] >= P_WAVE_MIN_RATIO) & \
        (m["p_wave_consistency"] >= P_WAVE_MIN_CONSISTENCY)


def _no_p_waves(m):
    measured = np.isfinite(m["p_wave_ratio"]) & np.isfinite(m["p_wave_consistency"])
    return measured & ~_p_waves(m)


_LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
_CHEST = ("V1", "V2", "V3", "V4", "V5", "V6")


def _in_mv(names, rule):
    """A rule on absolute voltages, false where the record's voltages are z-units (a source
    z-scored per lead before it reached us: its amplitudes say nothing in mV)."""
    return names + ("z_scored_source",), lambda m: rule(m) & (m["z_scored_source"] == 0)


def _all_below(leads, mv):
    names = tuple(f"qrs_amplitude_{lead}" for lead in leads)
    return _in_mv(names, lambda m: np.all([m[n] < mv for n in names], axis=0))


def _in_leads(kind, leads, test, at_least=2):
    """``test`` of the ratio of ``kind``'s value to the lead's QRS peak to peak, true in at
    least ``at_least`` of ``leads``. A ratio, so that it reads the same on z-scored leads."""
    names = tuple(f"{k}_{lead}" for lead in leads for k in (kind, "qrs_amplitude"))

    def rule(m):
        hits = [test(m[f"{kind}_{lead}"] / m[f"qrs_amplitude_{lead}"]) for lead in leads]
        return np.sum(hits, axis=0) >= at_least
    return names, rule


def _q_waves(leads, at_least=2):
    """Q waves of at least ``Q_MS`` ms and a fifth of the lead's QRS deep in ``at_least`` of
    ``leads``."""
    names = tuple(f"{k}_{lead}" for lead in leads for k in ("q", "q_depth", "qrs_amplitude"))

    def rule(m):
        hits = [(m[f"q_{lead}"] >= Q_MS) & (m[f"q_depth_{lead}"] >= 0.2 * m[f"qrs_amplitude_{lead}"])
                for lead in leads]
        return np.sum(hits, axis=0) >= at_least
    return names, rule


Q_MS = 30                               # the Minnesota code's lower bound for a Q wave's width
ST_UP, ST_DOWN, T_NEGATIVE, T_FLAT, LATE = 0.10, -0.07, -0.10, 0.05, 0.12  # of the lead's QRS
_INFERIOR = ("II", "III", "aVF")
_ANTERIOR = ("V1", "V2", "V3", "V4")
_LATERAL = ("I", "aVL", "V5", "V6")
_RATE = ("heart_rate",)
_RR = ("rr_cv",)
_P = ("p_wave_ratio", "p_wave_consistency")
_LIMB_LOW = _all_below(_LIMB, 0.5)
_CHEST_LOW = _all_below(_CHEST, 1.0)
_SLOW = ("426627000",)                  # bradycardia (SNOMED): the parent of sinus bradycardia
_FAST = ("3424008",)                    # tachycardia (SNOMED): the parent of STACH and SVTAC
_Q = ("QWAVE", "164917005")
_ST_UP, _ST_DOWN = ("STE_", "164931005"), ("STD_", "429622005")
_T_INVERTED, _T_LOW = ("INVT", "59931005"), ("LOWT",)

FINDINGS = (
    Finding("rate_below_50", "heart rate below 50 per minute, well under 60",
            "rhythm and rate", _RATE,
            lambda m: m["heart_rate"] < 50, _SLOW),
    Finding("rate_50_59", "heart rate 50 to 59 per minute, under 60", "rhythm and rate", _RATE,
            _between("heart_rate", 50, 60), _SLOW),
    Finding("rate_60_100", "heart rate 60 to 100 per minute", "rhythm and rate", _RATE,
            _between("heart_rate", 60, 100.5)),
    Finding("rate_101_120", "heart rate 101 to 120 per minute, over 100", "rhythm and rate", _RATE,
            _between("heart_rate", 100.5, 120.5), _FAST),
    Finding("rate_above_120", "heart rate above 120 per minute, well over 100",
            "rhythm and rate", _RATE,
            lambda m: m["heart_rate"] >= 120.5, _FAST),
    Finding("rr_regular", "RR intervals equal from beat to beat", "rhythm and rate", _RR,
            lambda m: m["rr_cv"] < 0.08),
    Finding("rr_irregular", "RR intervals varying irregularly from beat to beat",
            "rhythm and rate", _RR,
            lambda m: m["rr_cv"] >= 0.15),
    Finding("early_beats", "beats arriving early, before the next expected beat",
            "rhythm and rate", ("premature_beats",), lambda m: m["premature_beats"] >= 1),
    Finding("odd_qrs_beats", "some beats with a QRS complex shaped unlike the dominant beats",
            "rhythm and rate", ("aberrant_beats",), lambda m: m["aberrant_beats"] >= 1),
    Finding("p_waves", "a P wave before every QRS complex", "rhythm and rate", _P, _p_waves),
    Finding("no_p_waves", "no visible P waves before the QRS complexes",
            "rhythm and rate", _P, _no_p_waves),
    Finding("pr_under_120", "PR interval shorter than 120 ms", "conduction and intervals", ("pr",),
            lambda m: m["pr"] < 120),
    Finding("pr_120_200", "PR interval 120 to 200 ms", "conduction and intervals", ("pr",),
            _between("pr", 120, 200.5)),
    Finding("pr_over_200", "PR interval longer than 200 ms", "conduction and intervals", ("pr",),
            lambda m: m["pr"] >= 200.5, ("LPR", "164947007")),
    Finding("qrs_under_100", "narrow QRS complex, under 100 ms",
            "conduction and intervals", ("qrs",),
            lambda m: m["qrs"] < 100),
    Finding("qrs_100_119", "QRS duration 100 to 119 ms", "conduction and intervals", ("qrs",),
            _between("qrs", 100, 120)),
    Finding("qrs_120_139", "wide QRS complex, 120 to 139 ms", "conduction and intervals", ("qrs",),
            _between("qrs", 120, 140)),
    Finding("qrs_140_plus", "very wide QRS complex, 140 ms or more", "conduction and intervals",
            ("qrs",), lambda m: m["qrs"] >= 140),
    Finding("qtc_under_450", "corrected QT interval under 450 ms",
            "conduction and intervals", ("qtc",),
            lambda m: m["qtc"] < 450),
    Finding("qtc_450_470", "corrected QT interval 450 to 470 ms",
            "conduction and intervals", ("qtc",),
            _between("qtc", 450, 470.5)),
    Finding("qtc_over_470", "corrected QT interval longer than 470 ms",
            "conduction and intervals", ("qtc",),
            lambda m: m["qtc"] >= 470.5, ("LNGQT", "111975006")),
    Finding("axis_minus30_90", "frontal QRS axis between -30 and +90 degrees", "axis",
            ("qrs_axis",), _between("qrs_axis", -30, 90)),
    Finding("axis_below_minus30", "frontal QRS axis pointing left, more negative than -30 degrees",
            "axis",
            ("qrs_axis",), lambda m: (m["qrs_axis"] < -30) & (m["qrs_axis"] >= -90), ("39732003",)),
    Finding("axis_over_90", "frontal QRS axis pointing right, beyond +90 degrees",
            "axis", ("qrs_axis",),
            lambda m: (m["qrs_axis"] >= 90) | (m["qrs_axis"] < -90), ("47665007",)),
    Finding("limb_qrs_under_05", "small QRS complexes, under 0.5 mV in every limb lead", "voltage",
            _LIMB_LOW[0], _LIMB_LOW[1], ("LVOLT", "251146004")),
    Finding("chest_qrs_under_1", "small QRS complexes, under 1 mV in every chest lead", "voltage",
            _CHEST_LOW[0], _CHEST_LOW[1], ("LVOLT", "251146004")),
    Finding("sokolow_over_35", "tall QRS complexes, S in V1 plus R in V5 or V6 over 3.5 mV",
            "voltage",
            *_in_mv(("sokolow_lyon",), lambda m: m["sokolow_lyon"] > 3.5), ("HVOLT", "VCLVH")),
    *(Finding(f"q_{region}", f"Q waves 30 ms or wider in leads {where}", "QRS shape",
              *_q_waves(leads), _Q)
      for region, where, leads in (("inferior", "II, III and aVF", _INFERIOR),
                                   ("anterior", "V2, V3 and V4", _ANTERIOR[1:]),
                                   ("lateral", "I, aVL, V5 and V6", _LATERAL))),
    Finding("late_up_v1", "QRS complex ending in an upright deflection in lead V1", "QRS shape",
            *_in_leads("qrs_terminal", ("V1",), lambda r: r >= LATE, 1)),
    Finding("late_down_lateral", "QRS complex ending in a negative deflection in leads I and V6",
            "QRS shape", *_in_leads("qrs_terminal", ("I", "V6"), lambda r: r <= -LATE, 2)),
    *(Finding(f"st_up_{region}", f"ST segment raised above the baseline in leads {where}",
              "ST segment and T wave", *_in_leads("st", leads, lambda r: r >= ST_UP), _ST_UP)
      for region, where, leads in (("inferior", "II, III and aVF", _INFERIOR),
                                   ("anterior", "V1 to V4", _ANTERIOR),
                                   ("lateral", "I, aVL, V5 and V6", _LATERAL))),
    *(Finding(f"st_down_{region}", f"ST segment sunk below the baseline in leads {where}",
              "ST segment and T wave", *_in_leads("st", leads, lambda r: r <= ST_DOWN), _ST_DOWN)
      for region, where, leads in (("inferior", "II, III and aVF", _INFERIOR),
                                   ("anterior", "V1 to V4", _ANTERIOR),
                                   ("lateral", "I, aVL, V5 and V6", _LATERAL))),
    *(Finding(f"t_negative_{region}", f"negative T waves in leads {where}",
              "ST segment and T wave", *_in_leads("t", leads, lambda r: r <= T_NEGATIVE),
              _T_INVERTED)
      for region, where, leads in (("inferior", "II, III and aVF", _INFERIOR),
                                   ("anterior", "V2, V3 and V4", _ANTERIOR[1:]),
                                   ("lateral", "I, V5 and V6", ("I", "V5", "V6")))),
    Finding("t_small", "T waves barely off the baseline in most leads", "ST segment and T wave",
            *_in_leads("t", ("I", "II", "aVF", "V3", "V4", "V5", "V6"),
                       lambda r: np.abs(r) < T_FLAT, 5), _T_LOW),
)
BY_CODE = {f.code: f for f in FINDINGS}
NEEDS = tuple(dict.fromkeys(n for f in FINDINGS for n in f.needs))


def stated(codes):
    """The class codes the finding statements of ``codes`` restate, each to the statement
    that states it: what training them trains."""
    return {c: code for code in codes for c in BY_CODE[code].states}


def statuses(targets, train_codes, finding_codes):
    """Each target's ``concepts.Status`` against what a run trained: its classes and what its
    finding statements restate, a status reached through a statement naming it."""
    from dataclasses import replace

    from . import concepts

    graph = concepts.load()
    by_code = stated(finding_codes)
    out = graph.statuses(targets, list(train_codes))
    strength = {"unseen": 0, "related": 1, "seen": 2}
    for target, st in graph.statuses(targets, list(train_codes) + sorted(by_code)).items():
        # a trained class names the tie where it is as close as a statement
        if strength[st.group] > strength[out[target].group] and st.via in by_code:
            out[target] = replace(st, via=by_code[st.via], why=f"{st.why}; the trained "
                                  f"statement {BY_CODE[by_code[st.via]].text!r} restates {st.via}")
    return out


def is_finding(code):
    return str(code).startswith(PREFIX)


def labels(measured, codes):
    """(N, len(codes)) uint8: each finding statement of ``codes`` true or false of each
    record, from ``measured`` ({measurement name: (N,) float}, NaN: not measurable)."""
    with np.errstate(invalid="ignore"):
        columns = [np.asarray(BY_CODE[c].rule(measured), bool) for c in codes]
    n = len(next(iter(measured.values()))) if measured else 0
    return np.stack(columns, axis=1).astype(np.uint8) if columns else np.zeros((n, 0), np.uint8)


def texts():
    """(codes, statements) of the whole vocabulary, in order."""
    return [f.code for f in FINDINGS], [f.text for f in FINDINGS]
