"""Measurements (ecgshard.measure) recover what was planted in a record, and travel with the
shards: build stores them from the raw record, ``ecgshard measure`` adds them to shards built
without, ``inspect`` shows them, and what could not be measured is counted by reason."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from ecgshard import build, findings, measure, shards, synth
from ecgshard.config import BuildConfig
from ecgshard.errors import SchemaError

LIMB_ANGLES = {"I": 0, "II": 60, "III": 120}


def _hann(t, start, width):
    """A raised-cosine wave of ``width`` s starting at ``start``: zero outside it."""
    x = (t - start) / width
    return np.where((x >= 0) & (x <= 1), 0.5 * (1 - np.cos(2 * np.pi * x)), 0.0)


def planted(fs=500, rate=72.0, pr=0.16, qrs=0.09, qt=0.38, axis=60.0, seconds=10.0,
            p_wave=True, rr=None, scale=1.0, seed=0, extra=None):
    """(12, T) mV with waves of known edges: P starts ``pr`` s before the QRS onset, the QRS
    lasts ``qrs`` s, the T wave ends ``qt`` s after the QRS onset; the QRS dipole points at
    ``axis`` degrees in the frontal plane (limb leads by Einthoven's and Goldberger's
    relations). ``rr``: the RR intervals (s) instead of a regular ``rate``. ``extra(t,
    onsets, qrs, qt)``: ``{lead: wave}`` added to those leads (ST, T, Q changes)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    intervals = rr if rr is not None else [60.0 / rate] * int(seconds * rate / 60 + 2)
    onsets = 0.5 + np.cumsum(np.r_[0, intervals])
    onsets = onsets[onsets + qt + 0.05 < seconds]
    p = sum(_hann(t, o - pr, 0.09) for o in onsets) if p_wave else 0 * t
    # the QRS: a small Q, a tall R and an S, adjoining, over exactly [onset, onset + qrs]
    q = sum(-0.15 * _hann(t, o, 0.2 * qrs) + _hann(t, o + 0.2 * qrs, 0.5 * qrs)
            - 0.3 * _hann(t, o + 0.7 * qrs, 0.3 * qrs) for o in onsets)
    tw = sum(_hann(t, o + qt - 0.2, 0.2) for o in onsets)

    def limb(angle):        # a lead at ``angle`` sees the dipoles' projections
        return (0.12 * p * math.cos(math.radians(angle - 50))
                + 1.2 * q * math.cos(math.radians(angle - axis))
                + 0.3 * tw * math.cos(math.radians(angle - 40)))

    lead_i, lead_ii = limb(0), limb(60)
    lead_iii = lead_ii - lead_i
    chest = [(-0.8, 0.05), (-0.4, 0.15), (0.3, 0.3), (0.9, 0.35), (1.1, 0.3), (0.9, 0.25)]
    sig = np.stack([lead_i, lead_ii, lead_iii, -(lead_i + lead_ii) / 2,
                    (lead_i - lead_iii) / 2, (lead_ii + lead_iii) / 2]
                   + [1.2 * qa * q + 0.08 * p + ta * tw for qa, ta in chest])
    for lead, wave in (extra(t, onsets, qrs, qt) if extra else {}).items():
        sig[shards.LEADS.index(lead)] += wave
    return scale * sig + rng.normal(0, 0.005, sig.shape)


def values_of(sig, fs):
    values, reasons = measure.measure(sig, fs)
    return {n: float(values[measure.INDEX[n]]) for n in measure.NAMES}, reasons


@pytest.mark.parametrize("fs", [500, 100])
@pytest.mark.parametrize("rate,pr,qrs,qt,axis", [
    (72, 0.16, 0.09, 0.38, 60), (48, 0.26, 0.09, 0.44, 0), (110, 0.14, 0.15, 0.34, -60),
    (80, 0.20, 0.12, 0.48, 120)])
def test_planted_rate_intervals_and_axis_are_recovered(fs, rate, pr, qrs, qt, axis):
    m, reasons = values_of(planted(fs, rate, pr, qrs, qt, axis), fs)
    assert m["heart_rate"] == pytest.approx(rate, abs=1.5)
    assert m["rr_cv"] < 0.02
    assert m["pr"] == pytest.approx(pr * 1000, abs=20)
    assert m["qrs"] == pytest.approx(qrs * 1000, abs=14)
    # the tangent method ends a raised-cosine T about 18 ms before its last non-zero sample
    assert m["qt"] == pytest.approx(qt * 1000 - 18, abs=25)
    assert m["qtc"] == pytest.approx(m["qt"] / math.sqrt(60 / rate), rel=0.02)
    assert abs((m["qrs_axis"] - axis + 180) % 360 - 180) < 12
    assert m["premature_beats"] == 0 and m["aberrant_beats"] == 0
    assert m["p_wave_consistency"] > 0.8 and not reasons


def _plateau(t, start, width, edge=0.03):
    """1 over ``width`` s from ``start``, with raised-cosine edges of ``edge`` s either side."""
    rise = np.clip((t - start + edge) / edge, 0, 1)
    fall = np.clip((start + width + edge - t) / edge, 0, 1)
    return 0.5 * (1 - np.cos(np.pi * np.minimum(rise, fall)))


def _st_raised(leads, mv):
    return lambda t, onsets, qrs, qt: {
        lead: mv * sum(_plateau(t, o + qrs + 0.02, qt - qrs - 0.2) for o in onsets)
        for lead in leads}


def _t_inverted(leads):
    # a T wave twice as large, negative: the planted T flips sign
    return lambda t, onsets, qrs, qt: {
        lead: -0.8 * sum(_hann(t, o + qt - 0.2, 0.2) for o in onsets) for lead in leads}


def _q_waves(leads):
    return lambda t, onsets, qrs, qt: {
        lead: -0.6 * sum(_hann(t, o, 0.05) for o in onsets) for lead in leads}


def _late_r_v1(t, onsets, qrs, qt):
    return {"V1": 0.8 * sum(_hann(t, o + qrs - 0.04, 0.05) for o in onsets)}


@pytest.mark.parametrize("extra,changed,true,false", [
    (_st_raised(("II", "III", "aVF"), 0.3), {"st_II": (0.2, 0.4), "st_aVF": (0.2, 0.4)},
     ["st_up_inferior"], ["st_up_anterior", "st_down_inferior"]),
    (_st_raised(("V5", "V6", "I"), -0.2), {"st_V5": (-0.3, -0.1)},
     ["st_down_lateral"], ["st_up_lateral", "st_down_inferior"]),
    (_t_inverted(("V2", "V3", "V4")), {"t_V3": (-1.0, -0.1)},
     ["t_negative_anterior"], ["t_negative_lateral", "t_negative_inferior"]),
    (_q_waves(("II", "III", "aVF")), {"q_II": (30, 60), "q_aVF": (30, 60)},
     ["q_inferior"], ["q_anterior", "q_lateral"]),
    (_late_r_v1, {"qrs_terminal_V1": (0.1, 1.0)}, ["late_up_v1"], ["late_down_lateral"]),
])
def test_planted_st_t_and_qrs_shape_are_recovered_and_read_as_findings(extra, changed, true,
                                                                       false):
    plain, _ = values_of(planted(), 500)
    values, _ = measure.measure(planted(extra=extra), 500)
    m = {n: float(values[measure.INDEX[n]]) for n in measure.NAMES}
    for name, (lo, hi) in changed.items():
        assert lo <= m[name] <= hi, (name, m[name], plain[name])
    codes = [findings.PREFIX + k for k in true + false]
    as_read = {n: values[[measure.INDEX[n]]] for n in measure.NAMES}
    plain_read = {n: np.array([plain[n]]) for n in measure.NAMES}
    assert findings.labels(as_read, codes)[0].tolist() == [1] * len(true) + [0] * len(false)
    # the unaltered record shows none of them
    assert not findings.labels(plain_read, codes)[0].any()


def test_voltage_is_in_millivolts_and_scales_with_the_record():
    one, _ = values_of(planted(scale=1.0), 500)
    two, _ = values_of(planted(scale=2.0), 500)
    # lead I at axis 60: the QRS dipole's projection, 1.2 * cos(60) of a 1.45-unit R-S swing
    assert one["qrs_amplitude_I"] == pytest.approx(1.2 * 0.5 * 1.3, rel=0.15)
    for lead in shards.LEADS:
        if one[f"qrs_amplitude_{lead}"] < 0.1:     # a lead square to the dipole: noise
            continue
        assert two[f"qrs_amplitude_{lead}"] == pytest.approx(
            2 * one[f"qrs_amplitude_{lead}"], rel=0.05)
    assert two["sokolow_lyon"] == pytest.approx(2 * one["sokolow_lyon"], rel=0.05)
    assert two["qrs"] == pytest.approx(one["qrs"], abs=4)


def test_a_source_z_scored_per_lead_is_told_and_no_voltage_statement_is_read_off_it():
    mv = planted(scale=2.0)
    z = (mv - mv.mean(axis=1, keepdims=True)) / mv.std(axis=1, keepdims=True)
    (in_mv, _), (in_z, _) = values_of(mv, 500), values_of(z, 500)
    assert in_mv["z_scored_source"] == 0 and in_z["z_scored_source"] == 1
    # a tenth of the record cut off (the shards keep the central seconds), or two leads
    # missing (flat, NaN), is still told
    gaps = z.copy()
    gaps[4], gaps[7] = 0.0, np.nan
    assert values_of(z[:, 500:], 500)[0]["z_scored_source"] == 1
    assert measure._z_scored(gaps) == 1 and measure._z_scored(mv) == 0
    assert in_z["heart_rate"] == pytest.approx(in_mv["heart_rate"], abs=0.5)
    assert in_z["qrs"] == pytest.approx(in_mv["qrs"], abs=6)
    codes = [f.code for f in findings.FINDINGS]
    read = {name: findings.labels({n: np.array([v[n]]) for n in findings.NEEDS}, codes)[0]
            for name, v in (("mv", in_mv), ("z", in_z))}
    voltage = np.array([f.family == "voltage" for f in findings.FINDINGS])
    assert read["mv"][voltage].any() and not read["z"][voltage].any()
    # statements on timing and on ratios within a lead read the same either way
    assert read["z"][~voltage].tolist() == read["mv"][~voltage].tolist()


def test_irregular_rhythm_without_p_waves_has_no_pr():
    rng = np.random.default_rng(3)
    rr = rng.uniform(0.45, 1.1, 20)
    m, reasons = values_of(planted(rr=rr, p_wave=False), 500)
    assert m["rr_cv"] > 0.15
    assert np.isnan(m["pr"]) and reasons["pr"] == "no_p_wave"
    assert m["heart_rate"] == pytest.approx(60 / rr[:len(rr)].mean(), rel=0.15)


def test_premature_beats_are_counted():
    rr = [0.85] * 4 + [0.5, 1.2] + [0.85] * 4 + [0.5, 1.2] + [0.85] * 2
    m, _ = values_of(planted(rr=rr), 500)
    assert m["premature_beats"] == 2
    # the early beats do not distort the intervals read off the dominant beats
    assert m["qrs"] == pytest.approx(90, abs=14)


def test_too_few_beats_is_a_named_reason_for_every_measurement():
    flat = np.random.default_rng(0).normal(0, 0.01, (12, 5000))
    values, reasons = measure.measure(flat, 500)
    assert values[measure.INDEX["n_beats"]] < measure.MIN_BEATS
    assert set(reasons) == set(measure.NAMES) - {"n_beats", "z_scored_source"}
    assert set(reasons.values()) == {"too_few_beats"}
    assert values[measure.INDEX["z_scored_source"]] == 0     # told without a beat
    assert np.isnan(values[[measure.INDEX[n] for n in reasons]]).all()


def test_a_failing_measurement_costs_no_record(monkeypatch):
    def broken(sig, fs):
        raise ValueError("boom")

    monkeypatch.setattr(measure, "measure", broken)
    values, reasons = measure.measure_record(planted(), 500, list(shards.LEADS), 10.0, "r1")
    assert np.isnan(values).all() and set(reasons.values()) == {"failed_ValueError"}


def test_count_reasons():
    assert measure.count_reasons([{"pr": "no_p_wave"}, {"pr": "no_p_wave", "qt": "no_t_wave"},
                                  {}]) == {"pr": {"no_p_wave": 2}, "qt": {"no_t_wave": 1}}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl")
    synth.write_ptbxl(root, n_records=40, seed=5, rates=(100,))
    return root


def test_build_stores_measurements_from_the_raw_record(tree, tmp_path):
    out = tmp_path / "shards"
    manifest = build.run(BuildConfig(source_dir=str(tree), out_dir=str(out), workers=1,
                                     normalize="zscore"))
    info = manifest["measurements"]
    assert info["version"] == measure.VERSION and info["names"] == list(measure.NAMES)
    assert "before the signal path" in info["source"]
    with h5py.File(out / manifest["shards"][0]["file"]) as f:
        stored = shards.read_measurements(f, ["heart_rate", "qrs_amplitude_V5", "qrs"])
        ids = shards.read_strings(f[shards.RECORD_ID])
        codes = json.loads(f.attrs["codes"])
        labels = f[shards.LABELS][...]
    # z-scored shards still carry millivolts: the synthetic records' V5 R is about 1.3 mV
    assert 0.5 < np.nanmedian(stored["qrs_amplitude_V5"]) < 3.0
    brady = labels[:, codes.index("SBRAD")] == 1
    tachy = labels[:, codes.index("STACH")] == 1
    assert brady.any() and tachy.any() and len(ids) == manifest["n_records"]
    assert stored["heart_rate"][brady].max() < 60 < stored["heart_rate"][tachy].min()
    wide = labels[:, codes.index("CLBBB")] == 1
    assert np.nanmin(stored["qrs"][wide]) >= 120
    lines = build.inspect(str(out))
    assert any("heart_rate" in line and "1/min" in line for line in lines)
    # z-scored by the build, not before it: the voltages above are mV and nothing is flagged
    assert any(line.split() == ["z_scored_source", "0", "of", "40", "records"] for line in lines)


def test_measure_adds_measurements_to_shards_built_without(tree, tmp_path, caplog):
    out = tmp_path / "shards"
    before = build.run(BuildConfig(source_dir=str(tree), out_dir=str(out), workers=1,
                                   measure=False))
    assert before["measurements"] is None
    path = out / before["shards"][0]["file"]
    with h5py.File(path) as f, pytest.raises(SchemaError, match="ecgshard measure"):
        shards.read_measurements(f, ["qrs"], str(path))
    assert any("none" in line for line in build.inspect(str(out)))
    after = build.measure_shards(str(out), workers=1)
    assert "shard signal (100 Hz" in after["measurements"]["source"]
    assert after["fingerprint"] != before["fingerprint"]
    # the rewritten shards pass the manifest's checks, and their signal is untouched
    lines = build.inspect(str(out), verify=True)
    assert any("verified" in line for line in lines)
    with h5py.File(path) as f:
        assert np.isfinite(shards.read_measurements(f, ["heart_rate"])["heart_rate"]).all()
    with caplog.at_level("INFO", logger="ecgshard.build"):
        assert build.measure_shards(str(out), workers=1)["fingerprint"] == after["fingerprint"]
    assert "already measured (measurements version" in caplog.text


def test_measure_on_shards_the_build_z_scored_flags_every_record(tree, tmp_path):
    out = tmp_path / "shards"
    build.run(BuildConfig(source_dir=str(tree), out_dir=str(out), workers=1, normalize="zscore",
                          measure=False))
    after = build.measure_shards(str(out), workers=1)
    assert "z-units" in after["measurements"]["source"]
    lines = build.inspect(str(out))
    assert any(line.split() == ["z_scored_source", "40", "of", "40", "records"] for line in lines)


def test_inspect_lists_every_class_where_the_build_summary_shows_the_most_frequent(tree,
                                                                                   tmp_path):
    out = tmp_path / "shards"
    manifest = build.run(BuildConfig(source_dir=str(tree), out_dir=str(out), workers=1))
    present = [c["code"] for c in manifest["classes"] if c["count"]]
    assert len(present) > 15
    lines = build.inspect(str(out))
    classes = lines[:[i for i, line in enumerate(lines) if "measurements" in line][0]]
    listed = [line.split()[0] for line in classes if line.startswith("    ")]
    assert sorted(listed) == sorted(present)
    shown = [line for line in build.summary_lines(manifest) if line.startswith("    ")]
    assert len(shown) == 15
