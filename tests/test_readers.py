import numpy as np
import pytest
import wfdb
from scipy.io import loadmat

from conftest import wrsamp
from ecgshard import readers, synth
from ecgshard.databases.cinc2021 import record_source_from_name
from ecgshard.errors import BadRecordError
from ecgshard.shards import LEADS


def test_fast_reader_equals_wfdb_and_reorders_leads_by_name(tmp_path):
    rng = np.random.default_rng(0)
    sig = rng.normal(0, 1, (12, 500))
    shuffled = ["V6", "avr", "I", "II", "III", "AVL", "aVF", "V1", "V2", "V3", "V4", "V5"]
    wrsamp(tmp_path, "r1", sig, 500, leads=shuffled)
    ours, fs, leads, hdr, digest = readers.read_wfdb(tmp_path / "r1.hea")
    ref, fields = wfdb.rdsamp(str(tmp_path / "r1"))
    assert fs == 500 and len(digest) == 64
    np.testing.assert_allclose(ours, ref.T, atol=1e-6)
    np.testing.assert_allclose(ours, sig, atol=1e-3)
    canon = readers.to_canonical_leads(ours, leads)
    np.testing.assert_allclose(canon[LEADS.index("V6")], sig[0], atol=1e-3)
    np.testing.assert_allclose(canon[LEADS.index("aVR")], sig[1], atol=1e-3)


def test_microvolt_units_are_scaled_to_millivolts(tmp_path):
    sig = np.full((12, 200), 500.0)   # 500 uV
    sig[:, ::2] = -500.0
    wrsamp(tmp_path, "uv", sig, 100, units="uV", gain=1.0)
    ours, *_ = readers.read_wfdb(tmp_path / "uv.hea")
    np.testing.assert_allclose(np.abs(ours), 0.5, atol=1e-3)


def test_challenge_mat_reader_equals_loadmat(tmp_path):
    rng = np.random.default_rng(1)
    sig = rng.normal(0, 1, (12, 2570))
    synth.write_fmt16(tmp_path / "I0001.mat", sig, 257, LEADS, mat=True,
                      comments=["# Age: 61", "#Sex: Female", "# Dx: 164889003,59118001"])
    ours, fs, leads, hdr, _ = readers.read_wfdb(tmp_path / "I0001.hea")
    val = loadmat(tmp_path / "I0001.mat")["val"]
    assert fs == 257 and list(leads) == list(LEADS)
    np.testing.assert_allclose(ours, val / 1000.0, atol=1e-6)
    assert hdr.comments["Dx"] == "164889003,59118001" and hdr.comments["Age"] == "61"
    # wfdb agrees on the MAT layout too
    ref, _ = wfdb.rdsamp(str(tmp_path / "I0001"))
    np.testing.assert_allclose(ours, ref.T, atol=1e-6)


def test_lowercase_mv_and_gain_without_baseline():
    text = ("HR00001 12 500 5000 04-Jun-2020 15:11:55\n" +
            "".join(f"HR00001.mat 16+24 1000/mv 16 0 -115 13047 0 {lead}\n" for lead in LEADS) +
            "#Age: 56\n#Sex: Female\n#Dx: 251146004,426783006\n")
    hdr = readers.parse_header(text)
    assert hdr.offsets == [24] * 12 and hdr.gains == [1000.0] * 12 and hdr.units[0] == "mv"
    assert hdr.comments["Dx"] == "251146004,426783006"


def test_truncated_and_missing_signal_files(tmp_path):
    wrsamp(tmp_path, "t", np.zeros((12, 1000)) + 0.1, 100)
    dat = tmp_path / "t.dat"
    dat.write_bytes(dat.read_bytes()[:5000])
    with pytest.raises(BadRecordError) as exc:
        readers.read_wfdb(tmp_path / "t.hea")
    assert exc.value.reason == "truncated_signal"
    dat.unlink()
    with pytest.raises(BadRecordError) as exc:
        readers.read_wfdb(tmp_path / "t.hea")
    assert exc.value.reason == "missing_signal_file"


def test_missing_extra_and_duplicate_leads():
    sig = np.arange(15 * 10, dtype=float).reshape(15, 10)
    with pytest.raises(BadRecordError) as exc:                 # V6 missing, V1 twice
        readers.to_canonical_leads(sig[:12], list(LEADS[:11]) + ["V1"])
    assert exc.value.reason in ("missing_lead", "duplicate_lead")
    with pytest.raises(BadRecordError) as exc:
        readers.to_canonical_leads(sig[:12], list(LEADS[:11]) + ["X7"])
    assert exc.value.reason == "missing_lead" and "X7" in str(exc.value)
    # PTB's 15 channels: the 12 leads are kept, the Frank leads dropped with a note
    notes = []
    out = readers.to_canonical_leads(sig, list(LEADS) + ["vx", "vy", "vz"], "s0010", notes)
    np.testing.assert_array_equal(out, sig[:12])
    assert notes == [("extra_channels_dropped", "s0010: channels beyond the 12 leads: "
                                                "['vx', 'vy', 'vz']")]
    # a lead given twice: identical copies are one lead (noted), different ones a bad record
    twice = np.vstack([sig[:12], sig[6:7]])
    notes = []
    out = readers.to_canonical_leads(twice, list(LEADS) + ["V1"], "r", notes)
    np.testing.assert_array_equal(out, sig[:12])
    assert notes[0][0] == "duplicate_lead_taken_once"
    with pytest.raises(BadRecordError) as exc:
        readers.to_canonical_leads(np.vstack([sig[:12], sig[7:8]]), list(LEADS) + ["V1"])
    assert exc.value.reason == "duplicate_lead"


@pytest.mark.parametrize("name,source", [("A0001", "CPSC2018"), ("Q0002", "CPSC-Extra"),
                                         ("I0075", "INCART"), ("S0001", "PTB"),
                                         ("HR21837", "PTB-XL"), ("E10344", "Georgia"),
                                         ("JS10646", "Chapman-Shaoxing"), ("JS10647", "Ningbo")])
def test_challenge_sources_from_record_names(name, source):
    assert record_source_from_name(name) == source


def test_fold_from_id_is_stable_and_spread():
    folds = [readers.fold_from_id(f"E{k:05d}") for k in range(2000)]
    assert readers.fold_from_id("E00001") == folds[1]
    counts = np.bincount(folds, minlength=11)[1:]
    assert counts.min() > 150
