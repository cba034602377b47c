"""Shared fixtures: tiny record trees written with wfdb.wrsamp, offline only."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ecgshard import synth  # noqa: E402

PTBXL_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def wrsamp(directory, name, sig, fs, leads=PTBXL_NAMES, units="mV", gain=1000.0):
    """Write (12, T) millivolts as a format-16 WFDB record, as PTB-XL stores them."""
    import wfdb

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=[units] * len(leads), sig_name=list(leads),
                p_signal=np.ascontiguousarray(np.asarray(sig, dtype=np.float64).T),
                fmt=["16"] * len(leads), adc_gain=[gain] * len(leads),
                baseline=[0] * len(leads), write_dir=str(directory))


def identity_signal(k, fs, seconds=10.0):
    """Record k: a 10 Hz sine whose amplitude is 0.1 * k mV in lead i scaled by (1 + i/12)."""
    t = np.arange(int(fs * seconds)) / fs
    scale = 0.1 * k * (1 + np.arange(12)[:, None] / 12)
    return scale * np.sin(2 * np.pi * 10 * t)[None, :]


def write_ptbxl_tree(root, n=24, fs=100, folder="records100", suffix="lr", codes_of=None):
    """PTB-XL layout with ``n`` identity records; returns the rows written."""
    root = Path(root)
    rows = []
    for k in range(1, n + 1):
        rec = f"{folder}/00000/{k:05d}_{suffix}"
        wrsamp(root / f"{folder}/00000", f"{k:05d}_{suffix}", identity_signal(k, fs), fs)
        codes = codes_of(k) if codes_of else ({"NORM": 100.0, "SR": 0.0} if k % 2 else
                                              {"CLBBB": 80.0, "SBRAD": 0.0})
        rows.append({"ecg_id": k, "patient_id": float(1000 + k // 2), "age": 50.0 + k,
                     "sex": k % 2, "scp_codes": repr(codes), "strat_fold": (k % 10) + 1,
                     "filename_lr": rec if suffix == "lr" else rec.replace("_hr", "_lr"),
                     "filename_hr": rec if suffix == "hr" else rec.replace("_lr", "_hr")})
    synth.write_ptbxl_tables(root, rows)
    return rows




@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Synthetic PTB-XL and Challenge trees, built into shards once for the session."""
    from ecgshard import build

    root = tmp_path_factory.mktemp("demo")
    synth.write_ptbxl(root / "ptbxl", n_records=700, seed=0, rates=(100,))
    synth.write_cinc2021(root / "cinc", n_per_source=40, seed=1)
    build.run(build.BuildConfig(source_dir=str(root / "ptbxl"), out_dir=str(root / "s-ptbxl"),
                                format="ptbxl", shard_size=256, workers=1))
    build.run(build.BuildConfig(source_dir=str(root / "cinc"), out_dir=str(root / "s-cinc"),
                                format="cinc2021", shard_size=128, workers=1))
    return root


@pytest.fixture(scope="session")
def demo_text(demo_data):
    """The offline MiniLM text matrix of both demo vocabularies."""
    from ecgshard import text

    out = demo_data / "text.h5"
    text.run(text.TextConfig(vocab=(str(demo_data / "s-ptbxl"), str(demo_data / "s-cinc")),
                             out=str(out), model="minilm-offline", device="cpu"))
    return out


@pytest.fixture(scope="session")
def demo_run(demo_data, demo_text):
    """A short fit on the demo PTB-XL shards with LVOLT held out."""
    from ecgshard import fit

    out = demo_data / "run"
    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), out=str(out),
                          holdout=("LVOLT",), epochs=10, batch_size=64, device="cpu",
                          min_positives=3))
    return out
