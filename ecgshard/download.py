"""``ecgshard download``: fetch PTB-XL or the Challenge 2021 data from PhysioNet, verified.

Every file is checked against the database's published ``SHA256SUMS.txt``. A file is written
as ``NAME.part`` and renamed only once its checksum matches, so a partial or corrupt file never
sits under its final name; an interrupted download resumes from the ``.part`` with an HTTP
Range request, and the checksum still decides. Transient errors (connection drops, HTTP 5xx,
429) are retried with exponential backoff.
"""
from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import databases
from .config import DownloadConfig
from .errors import ECGShardError
from .shards import sha256_file

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS.txt"


def downloadable():
    """The registered databases with a PhysioNet file tree to fetch."""
    return sorted(name for name, db in databases.DATABASES.items() if db.download_url)


def base_url(cfg):
    if cfg.base_url:
        return cfg.base_url.rstrip("/") + "/"
    db = databases.get(cfg.database)
    return db.download_url.format(version=cfg.version or db.download_version)


def wanted(cfg, path):
    """Whether a file of the database is needed for a build with these options."""
    return databases.get(cfg.database).wanted(path, cfg)


def parse_sums(text):
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or ".." in Path(name).parts or name.startswith("/"):
            raise ECGShardError(f"{SUMS}: cannot read line {line!r}")
        entries.append((name, digest.lower()))
    return entries


def run(cfg: DownloadConfig):
    """Download and verify; returns a summary dict. Raises if any file failed."""
    from tqdm.auto import tqdm

    url = base_url(cfg)
    dest = Path(cfg.dest)
    dest.mkdir(parents=True, exist_ok=True)
    sums_text = _fetch_bytes(url + SUMS, cfg).decode()
    entries = [(name, digest) for name, digest in parse_sums(sums_text) if wanted(cfg, name)]
    (dest / SUMS).write_text(sums_text)
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="download",
               disable=None)
    summary = {"files": len(entries), "bytes": 0, "verified": 0, "already_present": 0,
               "failed": []}
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        futures = {pool.submit(fetch_file, url, dest, name, digest, cfg, bar): name
                   for name, digest in entries}
        for future in as_completed(futures):
            name = futures[future]
            try:
                status, size = future.result()
            except ECGShardError as exc:
                log.error("%s", exc)
                summary["failed"].append({"file": name, "error": str(exc)})
                continue
            summary["verified"] += 1
            summary["bytes"] += size
            summary["already_present"] += status == "present"
    bar.close()
    if summary["failed"]:
        raise ECGShardError(f"{len(summary['failed'])} of {len(entries)} files failed (nothing "
                            f"unverified was kept; rerun to resume): " +
                            "; ".join(f"{f['file']}: {f['error']}" for f in summary["failed"][:5]))
    return summary


def fetch_file(url, dest, name, digest, cfg, bar=None):
    """One file: ('present' | 'downloaded', size). Resumes a ``.part``; verifies before rename."""
    final = dest / name
    if final.exists() and sha256_file(final) == digest:
        return "present", final.stat().st_size
    part = final.with_name(final.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):        # a checksum mismatch gets one fresh download
        _download(url + name, part, cfg, bar)
        if sha256_file(part) == digest:
            os.replace(part, final)
            return "downloaded", final.stat().st_size
        part.unlink()
        log.warning("%s: checksum mismatch%s", name, ", downloading again" if not attempt else "")
    raise ECGShardError(f"{name}: checksum does not match {SUMS} (the file was not kept)")


def _download(url, part, cfg, bar):
    delay = cfg.backoff
    for attempt in range(cfg.retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout) as response:
                if have and response.status != 206:
                    have = 0            # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                if bar is not None and length:
                    bar.total += int(length)
                    bar.refresh()
                with open(part, "ab" if have else "wb") as f:
                    while True:
                        chunk = response.read(1 << 16)
                        if not chunk:
                            break
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                if length and part.stat().st_size < have + int(length):
                    raise ConnectionError("transfer ended early")
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416:         # range beyond the end: the .part is complete (or bad)
                return
            if exc.code < 500 and exc.code != 429:
                raise ECGShardError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            error = exc
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            error = exc
        if attempt < cfg.retries:
            log.info("%s: %s; retry %d in %.1f s", url, error, attempt + 1, delay)
            time.sleep(delay)
            delay *= 2
    raise ECGShardError(f"{url}: {error} (after {cfg.retries} retries)")


def _fetch_bytes(url, cfg):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "file"
        _download(url, part, cfg, None)
        return part.read_bytes()


