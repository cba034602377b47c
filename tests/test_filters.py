import numpy as np
import pytest
from scipy import signal as sps

from ecgshard.errors import BadRecordError
from ecgshard.filters import FilterSpec, design, fit_length, preprocess, sosfiltfilt_numba


def _amplitude(x, fs, freq):
    """Amplitude of a frequency component of the central part of x (edges excluded)."""
    mid = x[..., len(x[-1]) // 5: -len(x[-1]) // 5]
    t = np.arange(mid.shape[-1]) / fs
    c, s = np.cos(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t)
    return 2 * np.hypot((mid * c).mean(-1), (mid * s).mean(-1))


@pytest.mark.parametrize("fs,band,notch", [(100, (0.5, 40.0), None), (500, (0.5, 40.0), 50.0),
                                           (257, (0.67, 100.0), 60.0)])
def test_numba_filter_equals_scipy(fs, band, notch):
    rng = np.random.default_rng(0)
    x = np.ascontiguousarray(rng.normal(size=(12, 3 * fs)).cumsum(axis=1))
    sos, zi, padlen = design(fs, band, 2, notch, 30.0)
    ours = sosfiltfilt_numba(sos, zi, x, padlen)
    ref = sps.sosfiltfilt(sos, x, axis=-1, padlen=padlen)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_band_keeps_10hz_and_removes_drift_and_hum():
    fs_in = 500
    t = np.arange(10 * fs_in) / fs_in
    sine = np.sin(2 * np.pi * 10 * t)
    drift = 2.0 * np.sin(2 * np.pi * 0.1 * t)
    hum = 0.5 * np.sin(2 * np.pi * 60 * t)
    sig = np.tile(sine + drift + hum, (12, 1))
    out = preprocess(sig, fs_in, FilterSpec(fs=100))
    assert out.shape == (12, 1000) and out.dtype == np.float32
    assert _amplitude(out, 100, 10.0)[0] == pytest.approx(1.0, abs=0.03)
    # The 0.1 Hz drift of 2 mV is all but gone; 60 Hz is above the new Nyquist rate.
    assert _amplitude(out, 100, 0.1)[0] < 0.05
    residual = out[0, 200:-200] - sine[::5][200:-200]
    assert np.abs(residual).max() < 0.1


def test_notch_removes_mains_at_the_source_rate():
    fs = 500
    t = np.arange(10 * fs) / fs
    sig = np.tile(np.sin(2 * np.pi * 10 * t) + 0.5 * np.sin(2 * np.pi * 50 * t), (12, 1))
    out = preprocess(sig, fs, FilterSpec(fs=500, band=(0.5, 100.0), notch=50.0))
    assert _amplitude(out, fs, 50.0)[0] < 0.01
    assert _amplitude(out, fs, 10.0)[0] == pytest.approx(1.0, abs=0.03)


def test_resampling_rates_of_the_challenge_sources():
    for fs_in in (257, 500, 1000):
        t = np.arange(10 * fs_in) / fs_in
        out = preprocess(np.tile(np.sin(2 * np.pi * 5 * t), (12, 1)), fs_in, FilterSpec(fs=100))
        assert out.shape == (12, 1000)
        assert _amplitude(out, 100, 5.0)[0] == pytest.approx(1.0, abs=0.03)


def test_zscore_normalisation():
    rng = np.random.default_rng(1)
    out = preprocess(rng.normal(3, 5, (12, 1000)), 100, FilterSpec(fs=100, normalize="zscore"))
    np.testing.assert_allclose(out.std(axis=1), 1.0, atol=1e-4)


def test_too_short_for_the_filter_is_a_bad_record():
    with pytest.raises(BadRecordError) as exc:
        preprocess(np.ones((12, 10)), 100, FilterSpec(fs=100))
    assert exc.value.reason == "too_short"


def test_fit_length_centre_crop_and_pad():
    x = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    cropped, n = fit_length(x, 4)
    assert n == 4 and (cropped == x[:, 3:7]).all()
    padded, n = fit_length(x, 15)
    assert n == 10 and (padded[:, :10] == x).all() and (padded[:, 10:] == 0).all()
