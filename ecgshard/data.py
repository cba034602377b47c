"""The data path of ``fit`` and ``zeroshot``: records selected by fold and label, streamed from
shards or preloaded, as batches of ``(signal, labels, heldout)`` tensors.

Selection happens where the labels are read (in the worker, on the raw shard rows), so the
count of held-out positives that reach a batch is a real check, not a restatement of the plan.

A fit over several shard sets takes one Selection per set, with the same output classes: a
set's label column for a class is the OR of that set's codes of the same concept
(``class_sources``), so SBRAD in PTB-XL and 426177001 in the Challenge label one column.
Epochs mix the sets by size, or by ``weights`` (each set's share of an epoch's draws).

Streaming (``ShardStream``): whole record blocks (a multiple of the HDF5 chunk) are read in a
shuffled block order (``seed + epoch``), pooled in a shuffle buffer and cut into batches inside
DataLoader worker processes; HDF5 files are opened lazily in each worker. Preloading
(``Preloaded``): the selected records are read once into one tensor on the target device and
batches are index slices of it, which removes the loader from the step entirely.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import findings, shards
from .errors import ECGShardError

log = logging.getLogger(__name__)

BLOCK_RECORDS = 4 * shards.CHUNK_RECORDS
BATCH_KEYS = ("signal", "labels", "heldout", "length")


@dataclass(frozen=True)
class Selection:
    """Which records of a shard set a stage uses, and how their labels map to classes."""
    shard_dir: str
    folds: tuple
    class_codes: tuple                  # output label columns, in this order
    exclude_codes: tuple = ()           # records carrying any of these are dropped
    watch_codes: tuple = ()             # counted per batch ("heldout"), never a label column
    # Per output class, this set's codes whose labels make its column (their OR); a class
    # with none is negative throughout the set. Default: each class its own code, required.
    class_sources: tuple | None = None
    # measured-finding statements (ecgshard.findings) as further label columns after the
    # classes, true or false of each record by its measurements
    findings: tuple = ()

    @property
    def columns(self):
        """The label columns' codes: the classes, then the finding statements."""
        return tuple(self.class_codes) + tuple(self.findings)


class _Columns:
    """Column indices of a Selection in one shard set's label matrix."""

    def __init__(self, sel, manifest):
        codes = shards.class_codes(manifest)
        index = {c: i for i, c in enumerate(codes)}
        if sel.class_sources is None:
            missing = [c for c in sel.class_codes if c not in index]
            if missing:
                raise ECGShardError(f"{sel.shard_dir} has no label column for {missing}")
            self.out, self.merge = np.asarray([index[c] for c in sel.class_codes], np.int64), None
        else:
            # (set codes, output classes): a record's output labels are its labels @ merge > 0
            self.out, self.merge = None, np.zeros((len(codes), len(sel.class_codes)), np.int32)
            for j, sources in enumerate(sel.class_sources):
                self.merge[[index[c] for c in sources], j] = 1
        self.exclude = np.asarray([index[c] for c in sel.exclude_codes if c in index], np.int64)
        self.watch = np.asarray([index[c] for c in sel.watch_codes if c in index], np.int64)
        self.folds = np.asarray(sel.folds, dtype=np.int64)
        self.findings = sel.findings
        if self.findings:
            entry = manifest.get("measurements") or {}
            if not entry.get("names"):
                raise ECGShardError(f"{sel.shard_dir} holds no measurements, which measured "
                                    f"findings are read from; add them with `ecgshard measure "
                                    f"{sel.shard_dir}`")
            # refused here, before training starts, rather than at the first shard read
            shards.check_measurements(entry.get("version"), entry["names"], findings.NEEDS,
                                      Path(sel.shard_dir) / shards.MANIFEST, sel.shard_dir)

    def measured(self, f, path, rows=slice(None)):
        """The measurements the finding columns read, or None without findings."""
        return shards.read_measurements(f, findings.NEEDS, path, rows) if self.findings \
            else None

    def apply(self, labels, folds, mentioned, measured=None):
        """Raw shard rows -> (keep mask, output labels, held-out-positive flags).

        ``mentioned`` marks every statement a record carries at any likelihood: a record is
        excluded for a held-out statement even where the statement stayed below the build's
        --min-likelihood and is no label. ``measured`` (``measured()``) makes the finding
        columns."""
        keep = np.isin(folds, self.folds)
        if len(self.exclude):
            keep &= ~mentioned[:, self.exclude].any(axis=1)
        heldout = mentioned[:, self.watch].any(axis=1) if len(self.watch) else \
            np.zeros(len(labels), bool)
        out = labels[:, self.out] if self.merge is None else \
            (labels.astype(np.int32) @ self.merge > 0).astype(labels.dtype)
        if self.findings:
            out = np.concatenate([out, findings.labels(measured, self.findings)], axis=1)
        return keep, out, heldout

    def read_block(self, f, start, stop):
        """The selected rows of one block of an open shard: (signal, labels, heldout, length,
        rows), or None when no row is selected. Shards are in fold order, so most blocks are
        kept whole and then no mask copy is made."""
        rows = slice(start, stop)
        keep, out, heldout = self.apply(f[shards.LABELS][rows], f[shards.FOLD][rows],
                                        shards.read_mentioned(f, rows),
                                        self.measured(f, f.filename, rows))
        if not keep.any():
            return None
        rows = slice(None) if keep.all() else keep
        return (f[shards.SIGNAL][start:stop][rows], out[rows], heldout[rows],
                f[shards.LENGTH][start:stop][rows], rows)


def shard_blocks(sel, manifest):
    """(path, start, stop) blocks of the shards that hold any of the selected folds."""
    wanted = {str(f) for f in sel.folds}
    blocks = []
    for entry in manifest["shards"]:
        if not wanted & set(entry["folds"]):
            continue
        path = str(Path(sel.shard_dir) / entry["file"])
        for start in range(0, entry["n_records"], BLOCK_RECORDS):
            blocks.append((path, start, min(start + BLOCK_RECORDS, entry["n_records"])))
    return blocks


def count_selection(sel):
    """Records kept, records dropped for an excluded label, and positives per output class."""
    manifest = shards.load_manifest(sel.shard_dir)
    cols = _Columns(sel, manifest)
    kept = excluded = 0
    positives = np.zeros(len(sel.columns), np.int64)
    for path, expected in shards.shard_entries(sel.shard_dir, manifest).items():
        with shards.open_shard(path, expected) as f, shards.reading(path):
            labels, folds = f[shards.LABELS][...], f[shards.FOLD][...]
            mentioned, measured = shards.read_mentioned(f), cols.measured(f, path)
        keep, out, _ = cols.apply(labels, folds, mentioned, measured)
        in_folds = np.isin(folds, cols.folds)
        excluded += int((in_folds & ~keep).sum())
        kept += int(keep.sum())
        positives += out[keep].sum(axis=0, dtype=np.int64)
    return kept, excluded, positives


def load_selection(sel, with_ids=False):
    """All selected records in shard order: float16 signal (N, 12, T), labels (N, C), heldout (N,)
    and, with ``with_ids``, record ids, patient ids, sources and folds."""
    manifest = shards.load_manifest(sel.shard_dir)
    cols = _Columns(sel, manifest)
    entries = shards.shard_entries(sel.shard_dir, manifest)
    sig, lab, held, lengths, ids, patients, sources, folds = [], [], [], [], [], [], [], []
    for path, start, stop in shard_blocks(sel, manifest):
        with shards.open_shard(path, entries[path]) as f, shards.reading(path):
            block = cols.read_block(f, start, stop)
            if block is None:
                continue
            signal, out, heldout, length, rows = block
            if with_ids:
                ids.append(shards.read_strings(f[shards.RECORD_ID], slice(start, stop))[rows])
                patients.append(shards.read_strings(f[shards.PATIENT_ID], slice(start, stop))[rows])
                sources.append(shards.read_strings(f[shards.SOURCE], slice(start, stop))[rows])
                folds.append(f[shards.FOLD][start:stop][rows])
        sig.append(signal)
        lab.append(out)
        held.append(heldout)
        lengths.append(length)
    t = manifest["n_samples"]
    result = {"signal": np.concatenate(sig) if sig else np.zeros((0, 12, t), np.float16),
              "labels": np.concatenate(lab) if lab else np.zeros((0, len(sel.columns)),
                                                                 np.uint8),
              "heldout": np.concatenate(held) if held else np.zeros(0, bool),
              "length": np.concatenate(lengths) if lengths else np.zeros(0, np.int32)}
    if with_ids:
        result["record_id"] = np.concatenate(ids) if ids else np.zeros(0, object)
        result["patient_id"] = np.concatenate(patients) if patients else np.zeros(0, object)
        result["source"] = np.concatenate(sources) if sources else np.zeros(0, object)
        result["fold"] = np.concatenate(folds) if folds else np.zeros(0, np.int64)
    return result


def _selections(sels):
    return (sels,) if isinstance(sels, Selection) else tuple(sels)


def epoch_shares(sizes, weights):
    """Each set's probability per draw: ``weights`` normalised, or by size without them."""
    shares = np.asarray(weights if weights else sizes, dtype=np.float64)
    return shares / shares.sum()


class ShardStream(torch.utils.data.IterableDataset):
    """Yields the selected records in shuffled order as dicts of tensors of ``batch_size``
    records, or of up to ``group`` batches laid end to end. Under torchrun, rank ``rank`` of
    ``world`` reads only every world-th shard block of the epoch's shuffled block order, so
    ranks see disjoint records. ``sel``: one Selection or several (one per shard set); with
    ``weights`` an epoch's block order is drawn (with replacement) so that each set's share of
    the records is its weight's."""

    def __init__(self, sel, batch_size, seed=0, buffer_records=4096, drop_last=True, group=1,
                 rank=0, world=1, weights=()):
        super().__init__()
        self.sels = _selections(sel)
        self.batch_size, self.seed, self.group = batch_size, seed, group
        self.buffer_records, self.drop_last = buffer_records, drop_last
        self.rank, self.world = rank, world
        self.manifests = [shards.load_manifest(s.shard_dir) for s in self.sels]
        # (set index, path, start, stop)
        self.blocks = [(i, *block) for i, (s, m) in enumerate(zip(self.sels, self.manifests))
                       for block in shard_blocks(s, m)]
        self.entries = {path: e for s, m in zip(self.sels, self.manifests)
                        for path, e in shards.shard_entries(s.shard_dir, m).items()}
        self.block_p = None
        if weights:
            # A block drawn brings all its records, so p(block) = share * rows / sum(rows^2)
            # over its set: records of a set equally likely, and each set's expected share
            # of the records drawn is its weight's, whatever its block sizes.
            rows = np.asarray([stop - start for _, _, start, stop in self.blocks], np.float64)
            of_set = np.asarray([i for i, *_ in self.blocks])
            sizes = np.bincount(of_set, weights=rows, minlength=len(self.sels))
            squares = np.bincount(of_set, weights=rows ** 2, minlength=len(self.sels))
            self.block_p = epoch_shares(sizes, weights)[of_set] * rows / squares[of_set]
            self.block_p /= self.block_p.sum()        # a set without blocks has no share
        self.epoch, self.repeat = 0, 0
        self._files = None

    def set_epoch(self, epoch, repeat=0):
        """``repeat``: a further pass within the epoch (a rank whose blocks ran out before the
        epoch's global step count), shuffled anew."""
        self.epoch, self.repeat = epoch, repeat

    def _file(self, path):
        # Opened lazily, per worker process: an h5py handle must not cross a fork.
        if self._files is None:
            self._files = {}
        if path not in self._files:
            self._files[path] = shards.open_shard(path, self.entries[path])
        return self._files[path]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        # The block order is the epoch's, the same on every rank and in every pass, so a
        # rank keeps its own blocks; the records within are shuffled anew per pass and rank
        # (one process, first pass: the seeds of a plain run).
        extra = [self.repeat, self.rank] if self.repeat or self.world > 1 else []
        rng = np.random.default_rng([self.seed, self.epoch, worker] + extra)
        order_rng = np.random.default_rng([self.seed, self.epoch])
        order = order_rng.permutation(len(self.blocks)) if self.block_p is None else \
            order_rng.choice(len(self.blocks), len(self.blocks), p=self.block_p)
        mine = [self.blocks[i] for i in order[self.rank::self.world][worker::n_workers]]
        cols = [_Columns(s, m) for s, m in zip(self.sels, self.manifests)]
        pool = {key: [] for key in BATCH_KEYS}
        pooled = 0
        for set_index, path, start, stop in mine:
            with shards.reading(path):
                block = cols[set_index].read_block(self._file(path), start, stop)
            if block is not None:
                for key, value in zip(BATCH_KEYS, block):
                    pool[key].append(value)
                pooled += len(block[1])
            if pooled >= self.buffer_records:
                pool, pooled = yield from self._drain(pool, rng, final=False)
        if pooled:
            yield from self._drain(pool, rng, final=True)

    def _drain(self, pool, rng, final):
        arrays = {k: np.concatenate(v) for k, v in pool.items()}
        perm = rng.permutation(len(arrays["labels"]))
        n_full = len(perm) // self.batch_size * self.batch_size
        # Several batches leave a worker as one contiguous item: one shared-memory transfer
        # instead of `group`; StreamLoader cuts them apart again (views, no copy).
        step = self.batch_size * self.group
        for i in range(0, n_full, step):
            yield _to_tensors(arrays, perm[i:min(i + step, n_full)])
        rest = perm[n_full:]
        if final:
            if len(rest) and not self.drop_last:
                yield _to_tensors(arrays, rest)
            return {}, 0
        return {k: [v[rest]] for k, v in arrays.items()}, len(rest)


def _to_tensors(arrays, idx):
    return {k: torch.from_numpy(np.ascontiguousarray(arrays[k][idx])) for k in BATCH_KEYS}


class StreamLoader:
    """DataLoader over a ShardStream: worker processes, pinned memory, non-blocking copies.
    ``batch_size`` is this process's share of the global batch."""

    def __init__(self, sel, batch_size, device, seed=0, workers=2, world=None, weights=()):
        rank, size = (world.rank, world.size) if world else (0, 1)
        self.dataset = ShardStream(sel, batch_size, seed=seed, group=8 if workers else 1,
                                   rank=rank, world=size, weights=weights)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None)

    def epoch(self, epoch, steps=None):
        """This process's batches of one epoch: one pass over its blocks, or exactly ``steps``
        batches (further shuffled passes when its blocks run out first), so that every rank
        takes the same number of steps."""
        done, repeat = 0, 0
        while steps is None or done < steps:
            self.dataset.set_epoch(epoch, repeat)
            before = done
            for group in self.loader:
                for i in range(0, len(group["labels"]), self.batch_size):
                    if steps is not None and done >= steps:
                        return
                    done += 1
                    yield {k: v[i:i + self.batch_size].to(self.device, non_blocking=True)
                           for k, v in group.items()}
            if steps is None or done == before:
                return
            repeat += 1


class Preloaded:
    """The whole selection as tensors on ``device``; an epoch is a seeded permutation, or with
    ``weights`` (several shard sets) a seeded draw with replacement in which each set's share
    of the records is its weight's. Under torchrun each global batch of the epoch's order is
    cut into the ranks' disjoint shares."""

    def __init__(self, sel, batch_size, device, seed=0, world=None, weights=()):
        parts = [load_selection(s) for s in _selections(sel)]
        arrays = {k: np.concatenate([part[k] for part in parts]) for k in BATCH_KEYS}
        self.device = torch.device(device)
        self.tensors = {k: torch.from_numpy(arrays[k]).to(self.device) for k in BATCH_KEYS}
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world = (world.rank, world.size) if world else (0, 1)
        self.record_p = None
        if weights:
            sizes = np.asarray([len(part["labels"]) for part in parts], np.float64)
            of_set = np.repeat(np.arange(len(parts)), sizes.astype(np.int64))
            self.record_p = torch.from_numpy(
                epoch_shares(sizes, weights)[of_set] / sizes[of_set])

    def __len__(self):
        return len(self.tensors["labels"])

    def epoch(self, epoch, steps=None):
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(len(self), generator=g) if self.record_p is None else \
            torch.multinomial(self.record_p, len(self), replacement=True, generator=g)
        perm = perm.to(self.device)
        global_batch = self.batch_size * self.world
        for n, i in enumerate(range(0, len(perm) - global_batch + 1, global_batch)):
            if steps is not None and n >= steps:
                return
            start = i + self.rank * self.batch_size
            idx = perm[start:start + self.batch_size]
            yield {k: v[idx] for k, v in self.tensors.items()}


def selection_bytes(n_records, n_samples):
    return n_records * 12 * n_samples * 2


def fits_in_memory(n_bytes, device):
    """Whether a float16 selection of ``n_bytes`` may be preloaded on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return n_bytes < 0.4 * free
    try:
        import os

        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 4 << 30
    return n_bytes < 0.3 * avail


def augment(x, length, generator, scale=0.15, noise=0.02, lead_dropout=0.1, crop=0):
    """On-device augmentation of a float (B, 12, T) batch whose records hold ``length`` (B,)
    valid samples: amplitude scale, noise, lead dropout, then a random start. Returns the batch
    and its new lengths.

    The random start cuts 0 to ``crop`` samples (never more than half a record) off the front
    and moves the rest forward, zero-padded: the encoder then sees a record at any phase of its
    beats and over windows of several lengths, not only the one that validation and scoring
    see.
    Random numbers come from ``generator`` (on x's device) so that a CPU run is reproducible;
    without a crop it draws none, so runs from before the crop repeat exactly.
    """
    b = x.shape[0]
    amp = 1 + scale * (2 * torch.rand(b, 1, 1, generator=generator, device=x.device) - 1)
    keep = (torch.rand(b, 12, 1, generator=generator, device=x.device) >= lead_dropout)
    jitter = noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x = (x * amp + jitter) * keep.to(x.dtype)
    if not crop:
        return x, length
    length = length.to(x.device)
    cut = torch.randint(0, crop + 1, (b,), generator=generator, device=x.device)
    cut = torch.minimum(cut, length // 2)
    index = torch.arange(x.shape[-1], device=x.device)[None, :] + cut[:, None]   # (B, T)
    inside = (index < length[:, None]).to(x.dtype)
    x = torch.gather(x, 2, index.clamp(max=x.shape[-1] - 1)[:, None, :].expand_as(x))
    return x * inside[:, None, :], length - cut
