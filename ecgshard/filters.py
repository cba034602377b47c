"""Signal path of ``build``: resampling, zero-phase filtering, standardisation.

scipy designs the filters (second-order sections: stable at 0.5 Hz where a transfer function
is not) and does the polyphase resampling; numba runs the filtering, since a zero-phase
forward-backward pass over 12 leads is the hot loop of a build. Contract of every step:
numpy ``(12, T)`` in, numpy ``(12, T)`` out, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numba import njit
from scipy import signal as sps

from .errors import BadRecordError


@njit(cache=True, nogil=True)
def _sosfilt_inplace(sos, x, zi_scaled):
    # Direct form II transposed, one section after the other, in place on a 1-d array.
    n_sections = sos.shape[0]
    for s in range(n_sections):
        b0, b1, b2 = sos[s, 0], sos[s, 1], sos[s, 2]
        a1, a2 = sos[s, 4], sos[s, 5]
        z0, z1 = zi_scaled[s, 0], zi_scaled[s, 1]
        for i in range(x.shape[0]):
            xi = x[i]
            yi = b0 * xi + z0
            z0 = b1 * xi - a1 * yi + z1
            z1 = b2 * xi - a2 * yi
            x[i] = yi


@njit(cache=True, nogil=True)
def sosfiltfilt_numba(sos, zi, x, padlen):
    """Zero-phase SOS filter of each row of ``x``, equal to ``scipy.signal.sosfiltfilt``.

    Parameters
    ----------
    sos : (S, 6) float64
    zi : (S, 2) float64, ``scipy.signal.sosfilt_zi(sos)``
    x : (L, T) float64, C-contiguous; T must exceed ``padlen``
    padlen : int, odd-extension length at each end (scipy's default rule)

    Returns
    -------
    (L, T) float64
    """
    n_leads, n = x.shape
    out = np.empty_like(x)
    ext = np.empty(n + 2 * padlen)
    for lead in range(n_leads):
        row = x[lead]
        # Odd extension: reflect about the end points, as scipy's odd_ext does.
        for i in range(padlen):
            ext[i] = 2.0 * row[0] - row[padlen - i]
            ext[n + padlen + i] = 2.0 * row[n - 1] - row[n - 2 - i]
        ext[padlen:padlen + n] = row
        _sosfilt_inplace(sos, ext, zi * ext[0])
        rev = ext[::-1].copy()
        _sosfilt_inplace(sos, rev, zi * rev[0])
        for i in range(n):
            out[lead, i] = rev[n + padlen - 1 - i]
    return out


@dataclass(frozen=True)
class FilterSpec:
    """What ``preprocess`` does; recorded in the manifest."""

    fs: int = 100                      # target rate, Hz
    band: tuple = (0.5, 40.0)          # band-pass edges in Hz; None disables
    order: int = 2                     # Butterworth order per pass (zero-phase doubles it)
    notch: float | None = None         # mains frequency to notch (50 or 60), None for off
    notch_q: float = 30.0
    normalize: str = "mv"              # "mv": keep millivolts; "zscore": per-lead standardise


@lru_cache(maxsize=64)
def design(fs, band, order, notch, notch_q):
    """SOS cascade for a target rate, with scipy's ``zi`` and ``padlen`` for the numba kernel."""
    sections = []
    nyq = fs / 2.0
    if band is not None:
        low, high = band
        if high >= nyq:
            sections.append(sps.butter(order, low, btype="highpass", fs=fs, output="sos"))
        else:
            sections.append(sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos"))
    if notch is not None and notch < nyq:
        b, a = sps.iirnotch(notch, notch_q, fs=fs)
        sections.append(sps.tf2sos(b, a))
    if not sections:
        return None
    sos = np.ascontiguousarray(np.vstack(sections), dtype=np.float64)
    zi = np.ascontiguousarray(sps.sosfilt_zi(sos), dtype=np.float64)
    n_zero_b = int((sos[:, 2] == 0).sum())
    n_zero_a = int((sos[:, 5] == 0).sum())
    padlen = 3 * (2 * len(sos) + 1 - min(n_zero_b, n_zero_a))
    if band is not None:
        # scipy's default pad (a few samples) leaves a high-pass transient of about 1/low
        # seconds at each end of a 10 s record; an odd extension of 1/low seconds absorbs it.
        padlen = max(padlen, int(round(fs / band[0])))
    return sos, zi, padlen


def resample(sig, fs_in, fs_out):
    """Polyphase, anti-aliased resampling of ``(L, T)`` from ``fs_in`` to ``fs_out`` Hz.

    Rational factors are reduced (500 -> 100 Hz is 1/5, 257 -> 100 Hz is 100/257); scipy's
    Kaiser-windowed FIR removes what lies above the new Nyquist frequency (so 60 Hz mains in a
    500 Hz record is gone at 100 Hz before any notch is needed).
    """
    if float(fs_in) == float(fs_out):
        return sig
    ratio = Fraction(fs_out).limit_denominator(10000) / Fraction(fs_in).limit_denominator(10000)
    return sps.resample_poly(sig, ratio.numerator, ratio.denominator, axis=-1)


def preprocess(sig, fs_in, spec):
    """Resample, filter and scale one record.

    Parameters
    ----------
    sig : (12, T_in) float, millivolts
    fs_in : float, Hz
    spec : FilterSpec

    Returns
    -------
    (12, T_out) float32 at ``spec.fs``; millivolts unless ``spec.normalize == "zscore"``.
    """
    x = resample(np.asarray(sig, dtype=np.float64), fs_in, spec.fs)
    designed = design(spec.fs, tuple(spec.band) if spec.band else None, spec.order, spec.notch,
                      spec.notch_q)
    if designed is not None:
        sos, zi, padlen = designed
        if x.shape[1] < 32:
            raise BadRecordError("too_short", f"{x.shape[1]} samples after resampling")
        x = sosfiltfilt_numba(sos, zi, np.ascontiguousarray(x), min(padlen, x.shape[1] - 1))
    if spec.normalize == "zscore":
        std = x.std(axis=1, keepdims=True)
        x = (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    return x.astype(np.float32)


def fit_length(sig, n_samples):
    """Centre-crop or end-pad ``(L, T)`` to ``n_samples``; returns (signal, valid length).

    Longer records keep their central window (start-up transients and end artefacts of long
    Holter-like records are avoided); shorter ones are zero-padded at the end, and the valid
    length is stored so that nothing downstream mistakes padding for signal.
    """
    t = sig.shape[1]
    if t >= n_samples:
        start = (t - n_samples) // 2
        return sig[:, start:start + n_samples], n_samples
    out = np.zeros((sig.shape[0], n_samples), dtype=sig.dtype)
    out[:, :t] = sig
    return out, t
