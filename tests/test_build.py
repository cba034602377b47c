import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import identity_signal, write_ptbxl_tree, wrsamp
from ecgshard import build, shards, synth
from ecgshard.cli import main
from ecgshard.errors import ECGShardError, SchemaError


def _cfg(src, out, **kw):
    kw.setdefault("workers", 1)
    return build.BuildConfig(source_dir=str(src), out_dir=str(out), **kw)


def _read_all(out):
    manifest = shards.load_manifest(out)
    data = {k: [] for k in shards.SHARD_KEYS}
    for path in shards.shard_paths(out, manifest):
        with shards.open_shard(path) as f:
            for k in shards.SHARD_KEYS:
                data[k].append(shards.read_strings(f[k]) if k in shards.STRING_KEYS else f[k][...])
    return manifest, {k: np.concatenate(v) for k, v in data.items()}


def test_ptbxl_round_trip_labels_folds_and_identity(tmp_path):
    rows = write_ptbxl_tree(tmp_path / "src", n=24)
    manifest = build.run(_cfg(tmp_path / "src", tmp_path / "out", shard_size=10))
    _, d = _read_all(tmp_path / "out")
    assert manifest["n_records"] == 24 and manifest["n_skipped"] == 0
    assert len(manifest["shards"]) == 3
    codes = shards.class_codes(manifest)
    assert d[shards.SIGNAL].dtype == np.float16 and d[shards.SIGNAL].shape == (24, 12, 1000)
    for i, rec in enumerate(d[shards.RECORD_ID]):
        k = int(rec)
        row = rows[k - 1]
        assert d[shards.FOLD][i] == row["strat_fold"]
        assert d[shards.PATIENT_ID][i] == str(int(row["patient_id"]))
        want = eval(row["scp_codes"])
        got = {codes[j] for j in np.flatnonzero(d[shards.LABELS][i])}
        assert got == set(want)
        for code, lik in want.items():
            assert d[shards.LIKELIHOOD][i, codes.index(code)] == int(lik)
        # identity: record k's 10 Hz sine keeps its amplitude (0.1 k mV in lead I)
        sig = d[shards.SIGNAL][i].astype(np.float64)
        ref = identity_signal(k, 100)
        np.testing.assert_allclose(sig[:, 100:-100], ref[:, 100:-100], atol=0.02 * k + 0.01)
    # shards are sorted by fold so a fold-restricted reader skips whole shards
    assert list(d[shards.FOLD]) == sorted(d[shards.FOLD])
    sclass = {c["code"]: c for c in manifest["classes"]}
    assert sclass["CLBBB"]["count"] == 12 and sclass["CLBBB"]["kind"] == ["diagnostic"]
    assert sclass["CLBBB"]["superclass"] == "CD"


def test_min_likelihood_threshold(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=10)
    manifest = build.run(_cfg(tmp_path / "src", tmp_path / "out", min_likelihood=50))
    counts = {c["code"]: c["count"] for c in manifest["classes"]}
    assert counts["SR"] == 0 and counts["NORM"] == 5 and counts["CLBBB"] == 5


def test_bad_records_are_named_skips_never_lost(tmp_path):
    src = tmp_path / "src"
    rows = write_ptbxl_tree(src, n=12)
    d = src / "records100/00000"
    (d / "00001_lr.dat").write_bytes((d / "00001_lr.dat").read_bytes()[:3000])   # truncated
    (d / "00002_lr.dat").unlink()                                                 # missing .dat
    nan = identity_signal(3, 100)
    nan[4, 10:20] = np.nan
    wrsamp(d, "00003_lr", nan, 100)                                               # NaN
    wrsamp(d, "00004_lr", identity_signal(4, 100)[:11], 100,
           leads=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5"])
    wrsamp(d, "00005_lr", identity_signal(5, 100), 100,
           leads=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "X9"])
    (d / "00006_lr.hea").write_text("garbage\n")                                  # header
    flat = identity_signal(7, 100)
    flat[8] = 0.0
    wrsamp(d, "00007_lr", flat, 100)                                              # flat lead
    wrsamp(d, "00008_lr", identity_signal(8, 100, seconds=2), 100)                # too short
    wrsamp(d, "99999_lr", identity_signal(1, 100), 100)                           # no CSV row
    rows.append(dict(rows[0], ecg_id=13, filename_lr="records100/00000/00013_lr"))  # no file
    rows.append(dict(rows[0], ecg_id=14, scp_codes="{}",
                     filename_lr="records100/00000/00009_lr"))                    # no labels
    synth.write_ptbxl_tables(src, rows)
    manifest = build.run(_cfg(src, tmp_path / "out", shard_size=5))
    by_id = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert by_id == {"1": "truncated_signal", "2": "missing_signal_file", "3": "nan_values",
                     "4": "missing_lead", "5": "missing_lead", "6": "unreadable_header",
                     "7": "flat_lead", "8": "too_short", "99999_lr": "no_metadata_row",
                     "13": "missing_record_file", "14": "no_labels"}
    assert manifest["n_records"] == 4 and manifest["n_skipped"] == 11
    assert manifest["skip_counts"]["truncated_signal"] == 1
    assert all(s["detail"] for s in manifest["skipped"])
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 0 and "truncated_signal" in result.output


def test_interrupted_build_resumes_to_identical_shards(tmp_path, monkeypatch):
    write_ptbxl_tree(tmp_path / "src", n=30)
    clean = build.run(_cfg(tmp_path / "src", tmp_path / "clean", shard_size=8))

    real = build.build_shard
    calls = []

    def crash_on_third(index, *args):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(index, *args)

    monkeypatch.setattr(build, "build_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build.run(_cfg(tmp_path / "src", tmp_path / "out", shard_size=8))
    assert not (tmp_path / "out" / shards.MANIFEST).exists()
    with pytest.raises(SchemaError, match="interrupted build"):
        shards.load_manifest(tmp_path / "out")
    monkeypatch.setattr(build, "build_shard", real)
    calls.clear()
    built = []
    monkeypatch.setattr(build, "build_shard", lambda i, *a: built.append(i) or real(i, *a))
    resumed = build.run(_cfg(tmp_path / "src", tmp_path / "out", shard_size=8))
    assert built == [2, 3]                      # the two finished shards were kept
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    # A damaged shard is detected by its checksum and rebuilt.
    path = tmp_path / "out" / resumed["shards"][0]["file"]
    with h5py.File(path, "r+") as f:
        f[shards.SIGNAL][0, 0, 0] = 7.0
    built.clear()
    again = build.run(_cfg(tmp_path / "src", tmp_path / "out", shard_size=8))
    assert built == [0]
    assert again["fingerprint"] == clean["fingerprint"]


def test_parallel_build_equals_serial(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=20)
    serial = build.run(_cfg(tmp_path / "src", tmp_path / "a", shard_size=5))
    parallel = build.run(_cfg(tmp_path / "src", tmp_path / "b", shard_size=5, workers=2))
    assert [s["sha256"] for s in serial["shards"]] == [s["sha256"] for s in parallel["shards"]]


def test_ptbxl_500hz_folder_is_resampled(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=6, fs=500, folder="records500", suffix="hr")
    manifest = build.run(_cfg(tmp_path / "src", tmp_path / "out"))
    assert manifest["ptbxl_rate"] == 500 and manifest["n_records"] == 6
    _, d = _read_all(tmp_path / "out")
    k = int(d[shards.RECORD_ID][0])
    np.testing.assert_allclose(d[shards.SIGNAL][0, :, 100:-100].astype(float),
                               identity_signal(k, 100)[:, 100:-100], atol=0.02 * k + 0.01)


def test_missing_csv_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ECGShardError, match="ptbxl_database.csv"):
        build.run(_cfg(tmp_path / "src", tmp_path / "out"))
    result = CliRunner().invoke(main, ["build", str(tmp_path / "src"), "--format", "ptbxl",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a PTB-XL directory" in result.output


def test_challenge_tree_sources_rates_lengths_and_unknown_codes(tmp_path):
    truth = synth.write_cinc2021(tmp_path / "src", n_per_source=6, seed=3)
    hea = tmp_path / "src/training/georgia/g1/E0099.hea"
    synth.write_fmt16(hea.with_suffix(".mat"), identity_signal(2, 500), 500,
                      shards.LEADS, mat=True, comments=["#Dx: 999999999,426783006"])
    manifest = build.run(_cfg(tmp_path / "src", tmp_path / "out", format="cinc2021"))
    assert manifest["n_records"] == len(truth) + 1 and manifest["n_skipped"] == 0
    assert manifest["sources"] == {"CPSC2018": 6, "Georgia": 7, "Ningbo": 6, "INCART": 6,
                                   "PTB": 6, "PTB-XL": 6}
    assert manifest["unknown_codes"] == {"999999999": 1}
    unknown = [c for c in manifest["classes"] if c["code"] == "999999999"][0]
    assert unknown["known"] is False and unknown["count"] == 1
    _, d = _read_all(tmp_path / "out")
    assert d[shards.SIGNAL].shape[1:] == (12, 1000)
    codes = shards.class_codes(manifest)
    for rec in truth:
        i = list(d[shards.RECORD_ID]).index(rec["record"])
        assert {codes[j] for j in np.flatnonzero(d[shards.LABELS][i])} == set(rec["codes"])
    # CPSC records of 8-20 s: longer ones centre-cropped to 10 s, shorter ones end-padded
    short = np.flatnonzero(d[shards.LENGTH] < 1000)
    assert len(short) and (d[shards.LENGTH] >= 800).all()
    for i in short:
        assert not d[shards.SIGNAL][i, :, d[shards.LENGTH][i]:].any()
        assert d[shards.SOURCE][i] == "CPSC2018"


def test_official_challenge_mapping_csv_is_accepted(tmp_path):
    synth.write_cinc2021(tmp_path / "src", n_per_source=3, seed=4, sources={"georgia"})
    table = tmp_path / "dx_mapping_scored.csv"
    table.write_text("Dx,SNOMEDCTCode,Abbreviation,CPSC,Total,Notes\n"
                     "sinus rhythm,426783006,NSR,1,1,\n")
    manifest = build.run(_cfg(tmp_path / "src", tmp_path / "out", format="cinc2021",
                              dx_map=str(table)))
    by_code = {c["code"]: c for c in manifest["classes"]}
    if "426783006" in by_code:
        assert by_code["426783006"]["name"] == "sinus rhythm" and by_code["426783006"]["known"]
    assert all(not c["known"] for code, c in by_code.items() if code != "426783006")
    assert str(table) in manifest["source_checksums"]


def test_reader_rejects_a_newer_schema(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=4)
    build.run(_cfg(tmp_path / "src", tmp_path / "out"))
    path = tmp_path / "out" / shards.MANIFEST
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="schema version 99"):
        shards.load_manifest(tmp_path / "out")


def test_flat_precordial_leads_as_in_real_ningbo_records(tmp_path):
    """Real Ningbo records (JS45542...) have flat V1-V6: a named skip by default, kept and
    listed with --flat-leads keep."""
    sig = identity_signal(3, 500)
    sig[6:] = 0.0
    synth.write_fmt16(tmp_path / "src/training/ningbo/g1/JS45542.mat", sig, 500, shards.LEADS,
                      mat=True, comments=["#Dx: 426783006"])
    synth.write_fmt16(tmp_path / "src/training/ningbo/g1/JS45543.mat", identity_signal(2, 500),
                      500, shards.LEADS, mat=True, comments=["#Dx: 426783006"])
    skipped = build.run(_cfg(tmp_path / "src", tmp_path / "a", format="cinc2021"))
    assert [s["reason"] for s in skipped["skipped"]] == ["flat_lead"]
    assert "V1" in skipped["skipped"][0]["detail"] and skipped["n_records"] == 1
    kept = build.run(_cfg(tmp_path / "src", tmp_path / "b", format="cinc2021",
                          flat_leads="keep"))
    assert kept["n_records"] == 2 and kept["n_skipped"] == 0
    assert [n["record_id"] for n in kept["kept_with_notes"]] == ["JS45542"]


def test_implausible_units_rates_and_damaged_samples_are_named_skips(tmp_path):
    """R2: a wrong gain or unit, an impossible rate, and samples that do not sum to the
    header's checksums are named skips, not shards of garbage."""
    src = tmp_path / "src"
    write_ptbxl_tree(src, n=8)
    d = src / "records100/00000"

    def edit(name, old, new):
        hea = d / f"{name}.hea"
        hea.write_text(hea.read_text().replace(old, new))

    edit("00001_lr", "1000.0(0)/mV", "1.0(0)/mV")                  # gain 1 instead of 1000
    edit("00002_lr", "/mV", "/V")                                  # millivolts labelled volts
    edit("00003_lr", "00003_lr 12 100 ", "00003_lr 12 0.5 ")         # 0.5 Hz
    blob = bytearray((d / "00004_lr.dat").read_bytes())
    blob[200] ^= 0x10                                              # one sample changed
    (d / "00004_lr.dat").write_bytes(bytes(blob))
    manifest = build.run(_cfg(src, tmp_path / "out", shard_size=5))
    by_id = {s["record_id"]: s for s in manifest["skipped"]}
    assert {k: v["reason"] for k, v in by_id.items()} == {
        "1": "implausible_amplitude", "2": "implausible_amplitude", "3": "bad_sampling_rate",
        "4": "checksum_mismatch"}
    assert "Check the units and the gain" in by_id["1"]["detail"]
    assert "header" in by_id["4"]["detail"] and manifest["n_records"] == 4


def test_the_same_source_spelled_otherwise_is_not_rebuilt(tmp_path, monkeypatch):
    """A relative path from another working directory, or a link, names the same records:
    the shards are kept and the fingerprint (what runs are keyed and resumed on) is the same."""
    write_ptbxl_tree(tmp_path / "data" / "src", n=12)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    first = build.run(_cfg(tmp_path / "data" / "src", tmp_path / "out", shard_size=8))
    real, built = build.build_shard, []
    monkeypatch.setattr(build, "build_shard", lambda i, *a: built.append(i) or real(i, *a))
    monkeypatch.chdir(tmp_path / "data")
    again = build.run(_cfg("src", tmp_path / "out", shard_size=8))
    linked = build.run(_cfg(tmp_path / "link" / "src", tmp_path / "out", shard_size=8))
    assert built == []
    assert again["fingerprint"] == linked["fingerprint"] == first["fingerprint"]
    assert again["params"]["source_dir"] == str((tmp_path / "data" / "src").resolve())


def test_a_rebuild_and_duplicate_files_leave_nothing_behind(tmp_path, caplog):
    """Low group: two ids naming one file are kept once (not in two folds); a rebuild with
    fewer records removes the shard files its manifest no longer lists; --limit > 0."""
    from ecgshard.errors import ECGShardError

    src = tmp_path / "src"
    rows = write_ptbxl_tree(src, n=20)
    rows.append(dict(rows[0], ecg_id=21, strat_fold=10))             # 1's file again
    synth.write_ptbxl_tables(src, rows)
    first = build.run(_cfg(src, tmp_path / "out", shard_size=4))
    assert {s["record_id"]: s["reason"] for s in first["skipped"]} == {
        "21": "duplicate_record_file"}
    assert len(list((tmp_path / "out").glob("shard-*.h5"))) == 5
    with caplog.at_level("INFO"):
        again = build.run(_cfg(src, tmp_path / "out", shard_size=4, limit=6))
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*.h5")) == \
        [s["file"] for s in again["shards"]] and len(again["shards"]) == 2
    assert "removed 3 shard files" in caplog.text
    with pytest.raises(ECGShardError, match="--limit must be > 0"):
        _cfg(src, tmp_path / "x", limit=-75)


class _Bar:
    """tqdm's interface as build uses it, recording each step."""
    instances = []

    def __init__(self, total, **kwargs):
        self.total, self.n, self.steps = total, 0, []
        _Bar.instances.append(self)

    def update(self, k):
        self.n += k
        self.steps.append(k)

    def close(self):
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_the_build_progress_moves_record_by_record(tmp_path, monkeypatch, workers):
    """A shard of 2,048 records takes 20 s: the bar moves per record, in workers too."""
    import tqdm.auto

    synth.write_ptbxl(tmp_path / "raw", n_records=60, seed=2, rates=(100,))
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.instances.clear()
    manifest = build.run(build.BuildConfig(source_dir=str(tmp_path / "raw"),
                                           out_dir=str(tmp_path / "s"), workers=workers,
                                           shard_size=25, measure=False))
    (bar,) = _Bar.instances
    assert bar.total == bar.n == manifest["n_records"] + len(manifest["skipped"]) == 60
    if workers == 1:
        assert bar.steps == [1] * 60
    # with 2 workers the bar is fed only by the count the workers keep (polled every 0.5 s),
    # so its reaching the total shows their per-record steps arrive
