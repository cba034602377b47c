"""The signal path: what every ECG goes through before an encoder sees it — the 12 leads in
order, plausibility checks, the central window, resampling, band-pass and notch, normalisation,
the fixed length — and what is compared whenever two stages meet.

``build`` writes shards through ``SignalPath.process``; a shard set's manifest and a run's
record hold its ``to_dict()``; ``zeroshot``, ``embed`` and ``probe`` refuse shards whose path
differs from the run's (``require_same``); ``predict`` and the Python API put raw records
through the run's path, so a record scored from its raw files equals the same record read
from a shard.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import readers, shards
from .errors import BadRecordError, ECGShardError
from .filters import FilterSpec, fit_length, preprocess

log = logging.getLogger(__name__)

SAMPLING_RATE_HZ = (50.0, 10000.0)
# The widest lead's peak-to-peak, in mV. Real records span 0.9-20 mV (500 PTB-XL records at
# both rates, 80 Challenge records from five sources; z-scored PTB-XL up to 24), and format 16
# at PTB-XL's gain cannot exceed 65.5: a gain of 1 instead of 1000, microvolts or ADC counts
# land in the hundreds or thousands, volts below 0.02.
AMPLITUDE_RANGE_MV = (0.05, 100.0)
MIN_SECONDS = 5.0                       # shorter records are skipped ("too_short")


@dataclass(frozen=True)
class SignalPath:
    fs: float = 100.0                   # Hz, after resampling
    n_samples: int = 1000               # per record: the central window, zero-padded
    band: tuple | None = (0.5, 40.0)    # Hz, zero-phase Butterworth band-pass; None: off
    notch: float | None = None          # Hz (mains); None: off
    normalize: str = "mv"               # mv (as recorded) or zscore (per lead)

    FIELDS = ("fs", "n_samples", "band", "notch", "normalize")

    @classmethod
    def of(cls, manifest):
        """The path a shard set was built with."""
        params = manifest["params"]
        return cls(fs=manifest["fs"], n_samples=manifest["n_samples"],
                   band=tuple(params["band"]) if params.get("band") else None,
                   notch=params.get("notch"), normalize=params.get("normalize"))

    @classmethod
    def from_dict(cls, stored):
        """The path as a run record stores it (``to_dict``)."""
        return cls(fs=stored["fs"], n_samples=stored["n_samples"],
                   band=tuple(stored["band"]) if stored.get("band") else None,
                   notch=stored.get("notch"), normalize=stored.get("normalize"))

    def to_dict(self):
        return {"fs": self.fs, "n_samples": self.n_samples,
                "band": list(self.band) if self.band else None, "notch": self.notch,
                "normalize": self.normalize}

    def differences(self, other):
        """``["fs: 100 vs 500", ...]`` (this vs ``other``) for the fields that differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in self.FIELDS if mine[k] != theirs[k]]

    @property
    def seconds(self):
        return self.n_samples / self.fs

    @property
    def filter_spec(self):
        return FilterSpec(fs=self.fs, band=tuple(self.band) if self.band else None,
                          notch=self.notch, normalize=self.normalize)

    def process(self, sig, fs, leads, where="", flat_leads="skip", min_seconds=MIN_SECONDS):
        """A raw record — ``(L, T)`` millivolts at ``fs`` Hz, its lead names — through this
        path. Returns ``(float16 (12, n_samples), valid length, notes)``, notes being
        ``(reason, detail)`` of what was kept despite a problem (a flat lead with
        ``flat_leads="keep"``, extra channels); raises ``BadRecordError``."""
        if not (np.isscalar(fs) and SAMPLING_RATE_HZ[0] <= fs <= SAMPLING_RATE_HZ[1]):
            raise BadRecordError("bad_sampling_rate", f"{where}: fs={fs!r}; a 12-lead ECG is "
                                 f"sampled at {SAMPLING_RATE_HZ[0]:g} to "
                                 f"{SAMPLING_RATE_HZ[1]:g} Hz")
        lead_notes, flat_notes = [], []
        sig = readers.to_canonical_leads(sig, leads, where, lead_notes)
        if not np.isfinite(sig).all():
            bad = [shards.LEADS[i] for i in np.flatnonzero(~np.isfinite(sig).all(axis=1))]
            raise BadRecordError("nan_values", f"{where}: non-finite samples in {bad}")
        seconds = sig.shape[1] / fs
        if seconds < min_seconds:
            raise BadRecordError("too_short", f"{where}: {seconds:.2f} s < {min_seconds} s")
        ptp = np.ptp(sig, axis=1)
        flat = np.flatnonzero(ptp < 1e-3)
        if len(flat) < len(ptp):        # all flat is no unit error: the flat rule says it
            check_amplitude(ptp, where)
        if len(flat):
            detail = f"{where}: no signal in {[shards.LEADS[i] for i in flat]}"
            if flat_leads == "skip":
                raise BadRecordError("flat_lead", detail)
            flat_notes.append(("flat_lead_kept", detail))
        if seconds > self.seconds * 1.5:
            # Long records (PTB's 2-minute ones): cut the central window first, with a margin
            # for the filters, so that resampling and filtering work on what is kept.
            keep = int(round((self.seconds + 4.0) * fs))
            start = (sig.shape[1] - keep) // 2
            sig = sig[:, start:start + keep]
        x, length = fit_length(preprocess(sig, fs, self.filter_spec), self.n_samples)
        if not np.isfinite(x).all() or np.abs(x).max() > 6e4:
            raise BadRecordError("out_of_range",
                                 f"{where}: values beyond float16 after filtering")
        return x.astype(np.float16), length, flat_notes + lead_notes


# How far a scored set's typical lead amplitude may stray from the training input's before a
# warning: a run trained on z-scored leads (SD 1) given millivolts (SD ~0.15) is 7x off.
SCALE_TOLERANCE = 3.0


def amplitude_scale(signal, length):
    """The typical lead amplitude of records on a signal path: the median over records of the
    median over leads of each lead's SD within its valid samples (``signal`` (N, 12, T))."""
    if not len(signal):
        return None
    per_record = [np.median(np.asarray(x[:, :n], np.float32).std(axis=1))
                  for x, n in zip(signal, length)]
    return float(np.median(per_record))


def check_scale(trained, scored, what):
    """Warn, naming both, when ``scored`` (``amplitude_scale`` of the records scored) is more
    than ``SCALE_TOLERANCE`` times off the run's training input (``trained``; None for runs
    from before it was recorded): the run would score every record alike."""
    if not trained or not scored:
        return
    ratio = scored / trained
    if ratio > SCALE_TOLERANCE or ratio < 1 / SCALE_TOLERANCE:
        log.warning("%s have a typical lead SD of %.3g, %.1fx the run's training input (%.3g, "
                    "in the same signal path's units): records in other units than it was "
                    "trained on (millivolts given to a run trained on z-scored leads, or the "
                    "reverse) all score alike. Check the units and --normalize", what, scored,
                    ratio, trained)


def check_amplitude(ptp, where):
    """``ptp``: each lead's peak-to-peak (computed once for the flat-lead rule too)."""
    widest = float(ptp.max())
    if not AMPLITUDE_RANGE_MV[0] <= widest <= AMPLITUDE_RANGE_MV[1]:
        raise BadRecordError(
            "implausible_amplitude",
            f"{where}: the widest lead spans {widest:.4g} mV peak to peak; a 12-lead ECG in "
            f"millivolts spans {AMPLITUDE_RANGE_MV[0]:g} to {AMPLITUDE_RANGE_MV[1]:g}. Check "
            f"the units and the gain (a .npy/.npz record must be in mV)")


def require_same(info, manifest, shard_dir, allow=False):
    """Shards scored with a run must have been made like its training shards; the message
    names both sides. ``allow`` (``--allow-signal-mismatch``) scores anyway, warned."""
    diffs = SignalPath.from_dict(info.signal_path).differences(SignalPath.of(manifest))
    if diffs and not allow:
        raise ECGShardError(
            f"the evaluated shards {shard_dir} were built with another signal path than the "
            f"run's training shards {', '.join(info.shards)} (training vs evaluated: "
            f"{'; '.join(diffs)}). Rebuild them with the run's settings, or pass "
            f"--allow-signal-mismatch if the difference is deliberate.")
    if diffs:
        log.warning("signal path differs from training (%s); allowed by "
                    "--allow-signal-mismatch", "; ".join(diffs))
