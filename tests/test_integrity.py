"""Nothing stale, nothing mixed, nothing silently lost: the cases of docs/integrity.md."""
import json
import re
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import identity_signal, write_ptbxl_tree, wrsamp
from ecgshard import build, data, fit, shards, synth
from ecgshard.cli import main
from ecgshard.errors import ECGShardError, SchemaError


def _build(src, out, **kw):
    kw.setdefault("workers", 1)
    return build.run(build.BuildConfig(source_dir=str(src), out_dir=str(out), **kw))


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _offsets(path):
    with h5py.File(path, "r") as f:
        return {"labels": f[shards.LABELS].id.get_chunk_info(0).byte_offset,
                "signal": f[shards.SIGNAL].id.get_chunk_info(0).byte_offset + 100}


@pytest.fixture
def tree(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=30)
    _build(tmp_path / "src", tmp_path / "out", shard_size=16)
    return tmp_path


@pytest.mark.parametrize("where", ["labels", "signal"])
def test_a_flipped_byte_is_refused_by_every_reader_with_the_shard_named(tree, where):
    out = tree / "out"
    manifest = shards.load_manifest(out)
    first = out / manifest["shards"][0]["file"]
    _flip(first, _offsets(first)[where])
    sel = data.Selection(str(out), tuple(range(1, 11)), ("NORM",))
    with pytest.raises(SchemaError, match=f"{first.name}: checksum .* does not match"):
        data.count_selection(sel)
    with pytest.raises(SchemaError, match=first.name):
        data.load_selection(sel)
    result = CliRunner().invoke(main, ["inspect", str(out), "--verify"])
    assert result.exit_code == 2 and first.name in result.output


@pytest.mark.parametrize("where", ["labels", "signal"])
def test_a_changed_byte_with_its_mtime_restored_fails_the_read(tree, where):
    """R7: the stamp spares the hash, but every chunk read is checked (fletcher32)."""
    import os

    out = tree / "out"
    sel = data.Selection(str(out), tuple(range(1, 11)), ("NORM",))
    data.load_selection(sel)                               # hashed once, stamped
    first = out / shards.load_manifest(out)["shards"][0]["file"]
    st = first.stat()
    _flip(first, _offsets(first)[where])
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SchemaError, match=f"{first.name}: damaged data"):
        data.load_selection(sel)
    with pytest.raises(SchemaError, match=f"{first.name}: damaged data"):
        list(data.ShardStream(sel, batch_size=4))


def test_an_edited_manifest_is_refused_not_trusted(tree):
    """R8: swapped class entries would swap labels; an edited count would drop records."""
    out = tree / "out"
    original = (out / shards.MANIFEST).read_text()
    sel = data.Selection(str(out), tuple(range(1, 11)), ("NORM", "CLBBB"))
    manifest = json.loads(original)
    classes = manifest["classes"]
    i, j = [k for k, c in enumerate(classes) if c["code"] in ("NORM", "CLBBB")]
    classes[i], classes[j] = classes[j], classes[i]
    (out / shards.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="does not hold what manifest.json says .*codes"):
        data.count_selection(sel)
    manifest = json.loads(original)
    manifest["n_records"] -= 5
    (out / shards.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="n_records .* the manifest was edited"):
        data.count_selection(sel)
    manifest["shards"][0]["n_records"] -= 5
    (out / shards.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="n_records: 16 in the shard, 11 in the manifest"):
        data.load_selection(sel)
    (out / shards.MANIFEST).write_text(original)
    assert data.count_selection(sel)[0] == 30


def test_verification_hashes_a_shard_once_until_it_changes(tree, monkeypatch):
    out = tree / "out"
    manifest = shards.load_manifest(out)
    path, expected = next(iter(shards.shard_entries(out, manifest).items()))
    sha = expected.sha256
    calls = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(shards, "_verified", {})           # a fresh process
    (out / shards.VERIFIED_STAMPS).unlink(missing_ok=True)
    shards.verify_shard(path, sha)
    shards.verify_shard(path, sha)
    assert len(calls) == 1
    monkeypatch.setattr(shards, "_verified", {})           # another process: the stamp serves
    shards.verify_shard(path, sha)
    assert len(calls) == 1
    time.sleep(0.01)
    _flip(path, _offsets(path)["labels"])                  # a write moves the mtime
    with pytest.raises(SchemaError):
        shards.verify_shard(path, sha)


def test_a_broken_hdf5_signature_names_the_file(tree):
    out = tree / "out"
    manifest = shards.load_manifest(out)
    first = out / manifest["shards"][0]["file"]
    with open(first, "r+b") as f:
        f.write(b"\0" * 8)
    with pytest.raises(SchemaError, match=f"{first.name}: not a readable HDF5 shard"):
        shards.open_shard(first)


def test_a_rebuild_reads_changed_source_files_again(tmp_path):
    rows = write_ptbxl_tree(tmp_path / "src", n=12)
    bad = identity_signal(3, 100)
    bad[4, 100:200] = np.nan                                # record 3: unreadable
    wrsamp(tmp_path / "src/records100/00000", "00003_lr", bad, 100)
    m1 = _build(tmp_path / "src", tmp_path / "out", shard_size=4)
    assert {s["record_id"] for s in m1["skipped"]} == {"3"}
    sel = data.Selection(str(tmp_path / "out"), tuple(range(1, 11)), ())
    before = data.load_selection(sel, with_ids=True)
    five_before = before["signal"][list(before["record_id"]).index("5")].astype(float)
    time.sleep(0.01)
    wrsamp(tmp_path / "src/records100/00000", "00003_lr", identity_signal(3, 100), 100)  # repair
    wrsamp(tmp_path / "src/records100/00000", "00005_lr", 2 * identity_signal(5, 100), 100)
    m2 = _build(tmp_path / "src", tmp_path / "out", shard_size=4)
    assert m2["n_skipped"] == 0 and m2["n_records"] == len(rows)
    loaded = data.load_selection(sel, with_ids=True)
    five = loaded["signal"][list(loaded["record_id"]).index("5")].astype(float)
    np.testing.assert_allclose(five, 2 * five_before, atol=0.005)    # the signal path is linear


@pytest.mark.parametrize("fmt", ["ptbxl", "cinc2021"])
def test_a_record_id_listed_twice_is_kept_once(tmp_path, fmt):
    if fmt == "ptbxl":
        rows = write_ptbxl_tree(tmp_path / "src", n=10)
        copy = dict(rows[2], strat_fold=10 if rows[2]["strat_fold"] != 10 else 1)
        synth.write_ptbxl_tables(tmp_path / "src", rows + [copy])    # ecg_id 3 twice, another fold
        dup = "3"
    else:
        synth.write_cinc2021(tmp_path / "src", n_per_source=3, seed=0)
        heas = sorted((tmp_path / "src").rglob("*.hea"))
        dup = heas[0].stem
        other = heas[-1].parent / "copy"
        other.mkdir()
        for ext in (".hea", ".mat"):
            (other / (dup + ext)).write_bytes(heas[0].with_suffix(ext).read_bytes())
    manifest = _build(tmp_path / "src", tmp_path / "out", format=fmt)
    skips = [s for s in manifest["skipped"] if s["reason"] == "duplicate_record_id"]
    assert [s["record_id"] for s in skips] == [dup]
    sel = data.Selection(str(tmp_path / "out"), tuple(range(1, 11)), ())
    ids = list(data.load_selection(sel, with_ids=True)["record_id"])
    assert ids.count(dup) == 1


def test_fit_with_fewer_records_than_a_batch_takes_steps(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=30)
    _build(tmp_path / "src", tmp_path / "out")
    from ecgshard import text

    text.run(text.TextConfig(vocab=(str(tmp_path / "out"),), out=str(tmp_path / "t.h5"),
                             model="minilm-offline", device="cpu"))
    summary = fit.run(fit.FitConfig(shards=str(tmp_path / "out"), text=str(tmp_path / "t.h5"),
                                    out=str(tmp_path / "run"), epochs=2, batch_size=512,
                                    device="cpu", min_positives=2, data="preload"))
    assert summary["steps"] == 2
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
    check = json.loads((tmp_path / "run/heldout_check.json").read_text())
    assert check["batches"] == 2


def test_a_second_build_into_one_directory_is_refused(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=10)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ecgshard import shards\n"
         f"with shards.exclusive_lock({str(out)!r}, 'build'):\n"
         "    print('locked', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ECGShardError, match=f"in use by pid {holder.pid} \\(build\\)"):
            _build(tmp_path / "src", out, fs=50)
    finally:
        holder.kill()
        holder.wait()
    assert _build(tmp_path / "src", out)["n_records"] == 10      # free again
    with shards.exclusive_lock(tmp_path / "run", "fit"):
        with pytest.raises(ECGShardError, match="in use by"):
            fit.run(fit.FitConfig(shards=str(out), text="unused", out=str(tmp_path / "run")))


def _children(pid):
    """Pids whose parent is ``pid`` (Linux /proc)."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid):
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_build_takes_its_workers_along_and_leaves_the_lock_free(tmp_path, caplog):
    """R6: kill -9 of a 2-worker build leaves no orphan writing shards or holding the lock;
    the rerun takes the lock over, says so, and resumes."""
    import os
    import signal

    synth.write_ptbxl(tmp_path / "src", n_records=400, seed=0, rates=(100,))
    out = tmp_path / "out"
    build_cmd = (f"from ecgshard import build\n"
                 f"build.run(build.BuildConfig(source_dir={str(tmp_path / 'src')!r}, "
                 f"out_dir={str(out)!r}, format='ptbxl', shard_size=8, workers=2))")
    parent = subprocess.Popen([sys.executable, "-c", build_cmd])
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2:
        workers = _children(parent.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the build never started its workers"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    time.sleep(1.0)
    assert not [w for w in workers if _alive(w)]
    with caplog.at_level("WARNING"):
        manifest = _build(tmp_path / "src", out, format="ptbxl", shard_size=8)
    assert manifest["n_records"] + len(manifest["skipped"]) == 400
    assert f"lock left by pid {parent.pid} (build)" in caplog.text


def test_an_interrupted_rebuild_leaves_no_stale_manifest(tree, monkeypatch):
    out = tree / "out"
    done = []

    def one_then_die(index, items, task_fp, cfg, code_index):
        if done:
            raise KeyboardInterrupt
        done.append(index)
        return real(index, items, task_fp, cfg, code_index)

    real = build.build_shard
    monkeypatch.setattr(build, "build_shard", one_then_die)
    with pytest.raises(KeyboardInterrupt):
        _build(tree / "src", out, shard_size=16, fs=50)
    assert not (out / shards.MANIFEST).exists()
    with pytest.raises(SchemaError, match="interrupted build"):
        shards.load_manifest(out)
    monkeypatch.setattr(build, "build_shard", real)
    manifest = _build(tree / "src", out, shard_size=16, fs=50)         # resumes
    assert manifest["fs"] == 50 and manifest["n_samples"] == 500


# ---------------------------------------------------------------- medium and low

def test_malformed_ptbxl_metadata_is_a_named_skip_or_a_clear_error(tmp_path):
    rows = write_ptbxl_tree(tmp_path / "src", n=10)
    rows[0]["scp_codes"] = "NORM"                          # not a dict literal
    rows[1]["scp_codes"] = "['NORM', 'SR']"                # a list
    rows[2]["scp_codes"] = "{'NORM': 'high'}"              # a likelihood that is no number
    rows[3]["strat_fold"] = 3.7                            # no fold (not fold 3)
    synth.write_ptbxl_tables(tmp_path / "src", rows)
    manifest = _build(tmp_path / "src", tmp_path / "out")
    by_id = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert by_id == {"1": "bad_metadata", "2": "bad_metadata", "3": "bad_metadata",
                     "4": "no_fold"}
    assert manifest["n_records"] == 6
    (tmp_path / "src/ptbxl_database.csv").write_text("")
    with pytest.raises(ECGShardError, match="ptbxl_database.csv cannot be read as a CSV"):
        _build(tmp_path / "src", tmp_path / "out2")


def _challenge(tmp_path, n=2):
    synth.write_cinc2021(tmp_path / "src", n_per_source=n, seed=0)
    return sorted((tmp_path / "src").rglob("*.hea"))


def test_mat_files_whose_header_is_not_mat4_int16_are_named_skips(tmp_path):
    heas = _challenge(tmp_path)
    as_double, as_v5 = heas[0].with_suffix(".mat"), heas[1].with_suffix(".mat")
    blob = as_double.read_bytes()
    rows, cols = np.frombuffer(blob, "<i4", count=3)[1:]
    values = np.frombuffer(blob, "<i2", offset=24).astype(float)
    values[:50] = np.nan
    header = np.array([0, rows, cols, 0, 4], "<i4").tobytes() + b"val\0"   # type 0: double
    as_double.write_bytes(header + values.astype("<f8").tobytes())
    as_v5.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + bytes(200))
    manifest = _build(tmp_path / "src", tmp_path / "out", format="cinc2021")
    by_id = {s["record_id"]: (s["reason"], s["detail"]) for s in manifest["skipped"]}
    assert by_id[heas[0].stem][0] == "unreadable_signal" and "type 0" in by_id[heas[0].stem][1]
    assert by_id[heas[1].stem][0] == "unreadable_signal" and "MAT v5" in by_id[heas[1].stem][1]


def test_extra_channels_are_dropped_with_a_note(tmp_path):
    rows = write_ptbxl_tree(tmp_path / "src", n=10)
    sig = np.vstack([identity_signal(2, 100), np.ones((3, 1000))])
    wrsamp(tmp_path / "src/records100/00000", "00002_lr", sig, 100,
           leads=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
                  "vx", "vy", "vz"])
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest["n_records"] == len(rows) and manifest["n_skipped"] == 0
    [note] = manifest["kept_with_notes"]
    assert note["record_id"] == "2" and note["reason"] == "extra_channels_dropped"
    assert "['vx', 'vy', 'vz']" in note["detail"]


def test_links_orphans_and_unreadable_files_in_a_challenge_tree(tmp_path):
    heas = _challenge(tmp_path, n=2)
    n_records = len(heas)
    linked = tmp_path / "elsewhere"
    (heas[0].parent).rename(linked)                        # one source folder is a link
    heas[0].parent.symlink_to(linked, target_is_directory=True)
    orphan = heas[-1].with_name("Z0001.mat")
    orphan.write_bytes(heas[-1].with_suffix(".mat").read_bytes())    # .mat without .hea
    (heas[-1].parent / "X0002.hea").mkdir()                # a folder named like a header
    unreadable = heas[-1].with_suffix(".mat")
    unreadable.unlink()
    unreadable.mkdir()                                     # a signal that cannot be read
    manifest = _build(tmp_path / "src", tmp_path / "out", format="cinc2021")
    by_id = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert by_id == {"Z0001": "no_header", "X0002": "unreadable_header",
                     heas[-1].stem: "unreadable_signal"}
    assert manifest["n_records"] == n_records - 1          # the linked folder's records are in


def test_a_full_disk_is_one_clear_error_and_nothing_half_written(tmp_path, monkeypatch):
    import errno

    write_ptbxl_tree(tmp_path / "src", n=10)
    real = h5py.Group.create_dataset

    def full(self, name, *args, **kw):
        if name == shards.LABELS:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    with pytest.raises(ECGShardError, match="no space left on the device holding .* while "
                                            "writing shard-00000.h5; nothing kept was corrupted"):
        _build(tmp_path / "src", tmp_path / "out")
    assert not list((tmp_path / "out").glob("shard-*")) and not list(
        (tmp_path / "out").glob(".tmp-*"))


def test_an_unknown_code_with_positives_names_the_ways_out(tmp_path):
    from ecgshard import text

    heas = _challenge(tmp_path, n=4)
    for hea in heas:
        lines = hea.read_text().splitlines()
        hea.write_text("\n".join(ln + ",999000111" if ln.startswith("#Dx") else ln
                                 for ln in lines) + "\n")
    _build(tmp_path / "src", tmp_path / "out", format="cinc2021")
    text.run(text.TextConfig(vocab=(str(tmp_path / "out"),), out=str(tmp_path / "t.h5"),
                             model="minilm-offline", device="cpu"))
    with pytest.raises(ECGShardError) as err:
        fit.plan(fit.FitConfig(shards=str(tmp_path / "out"), text=str(tmp_path / "t.h5"),
                               out=str(tmp_path / "r"), min_positives=2,
                               train_folds=tuple(range(1, 9))))
    message = str(err.value)
    assert "999000111" in message and "--dx-map" in message and "code,name" in message
    assert "--min-positives" in message and "--holdout 999000111" in message


@pytest.fixture
def http_server():
    """A loopback HTTP server answering every request with ``status`` (or never)."""
    import http.server
    import threading

    servers = []

    def start(status):
        if status is None:                                 # accepts, never answers
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            servers.append(sock)
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):                              # noqa: N802
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for s in servers:
        if isinstance(s, socket.socket):
            s.close()
        else:
            s.shutdown()


@pytest.mark.parametrize("status,message", [(404, "no text model 'someone/absent' on .*HTTP 404"),
                                            (401, "gated or private"),
                                            (None, "did not answer within 0.5 s")])
def test_hub_failures_get_their_own_message_within_a_bounded_wait(http_server, monkeypatch,
                                                                  status, message):
    from ecgshard import text

    monkeypatch.setenv("HF_ENDPOINT", http_server(status))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(text, "HUB_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(ECGShardError, match=message):
        text._probe_hub("someone/absent")
    assert time.monotonic() - start < 5


def test_a_header_without_a_sample_count_is_read_to_the_end_of_the_file(tmp_path):
    write_ptbxl_tree(tmp_path / "src", n=10)
    hea = tmp_path / "src/records100/00000/00004_lr.hea"
    lines = hea.read_text().splitlines()
    lines[0] = " ".join(lines[0].split()[:3])              # "00004_lr 12 100" (no count)
    hea.write_text("\n".join(lines) + "\n")
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest["n_skipped"] == 0 and manifest["n_records"] == 10
    sel = data.Selection(str(tmp_path / "out"), tuple(range(1, 11)), ())
    loaded = data.load_selection(sel, with_ids=True)
    assert loaded["length"][list(loaded["record_id"]).index("4")] == 1000


def test_resume_on_other_shards_says_what_differs(tmp_path):
    from ecgshard import text

    write_ptbxl_tree(tmp_path / "src", n=30)
    _build(tmp_path / "src", tmp_path / "s100")
    _build(tmp_path / "src", tmp_path / "s50", fs=50)
    text.run(text.TextConfig(vocab=(str(tmp_path / "s100"),), out=str(tmp_path / "t.h5"),
                             model="minilm-offline", device="cpu"))
    common = dict(text=str(tmp_path / "t.h5"), out=str(tmp_path / "run"), epochs=2, max_steps=1,
                  batch_size=8, device="cpu", min_positives=2)
    fit.run(fit.FitConfig(shards=str(tmp_path / "s100"), **common))
    with pytest.raises(ECGShardError, match="fs: 100 vs 50; n_samples: 1000 vs 500"):
        fit.run(fit.FitConfig(shards=str(tmp_path / "s50"), resume=True, **common))


def test_a_full_disk_under_torch_and_plots_is_one_clear_error(tmp_path, monkeypatch):
    """R11: torch words a full disk as an enforce failure; the free space tells."""
    import shutil
    from collections import namedtuple

    import torch

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 4096))

    def full(obj, f, *a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ECGShardError, match="no space left on the device holding .* while "
                                            "writing checkpoint-best.pt"):
        shards.save_checkpoint(tmp_path / "checkpoint-best.pt", {"model": {}})
    assert not list(tmp_path.iterdir())
    with pytest.raises(ECGShardError, match="no space left .* writing z"):
        with shards.atomic_dir(tmp_path / "z", "report.json") as out:
            (out / "report.json").write_text("{}")
            raise OSError("cannot write mode RGBA as PNG")          # PIL's words
    assert not list(tmp_path.iterdir())


def test_ordinary_mistakes_are_one_line_not_a_traceback(demo_data, demo_run, tmp_path,
                                                        monkeypatch):
    """Low group: each is exit 2 with one line naming the thing, never a traceback."""
    import shutil

    import torch

    def fails(*args, match):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and re.search(match, result.output), \
            result.output

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    (tmp_path / "notes.txt").write_text("not hdf5")
    fails("zeroshot", "--run", run, "--shards", demo_data / "s-ptbxl", "--text",
          demo_data / "text.h5",
          "--out", tmp_path / "z", "--folds", "x", match="folds are numbers")
    if not torch.cuda.is_available():
        fails("embed", "--run", run, "--shards", demo_data / "s-ptbxl", "--out", tmp_path / "e.h5",
              "--device", "cuda", match="0 CUDA devices visible")
    fails("text-sim", tmp_path / "notes.txt", match="not a readable HDF5 text matrix")
    fails("report", tmp_path, match="no report.json in")
    fails("relations", "AFIBB", match="did you mean AFIB")
    fails("relations", "", match="not in the relation table")
    fails("embed-text", "--vocab", demo_data / "s-ptbxl", "--model", "minilm-offline",
          "--class-texts", tmp_path / "absent.json", "--out", tmp_path / "t.h5",
          match="cannot read the class texts .*absent.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails("predict", "--run", run, empty, "--classes", "x", match="no record files")
    ck = run / "checkpoint-best.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    fails("predict", "--run", run, tmp_path / "notes.txt", "--classes", "x",
          match="checkpoint-best.pt cannot be read as a checkpoint")
    (run / "run.json").write_text("{ broken")
    fails("predict", "--run", run, tmp_path / "notes.txt", "--classes", "x",
          match="run.json is not valid JSON")
    shards_copy = tmp_path / "s"
    shutil.copytree(demo_data / "s-ptbxl", shards_copy)
    (shards_copy / "manifest.json").write_text("[]")
    fails("inspect", shards_copy, match="manifest.json holds a JSON list")

    def read_only(*args, **kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "report.json"))

    monkeypatch.setattr(shards, "atomic_dir", read_only)
    fails("zeroshot", "--run", demo_run, "--shards", demo_data / "s-ptbxl", "--text",
          demo_data / "text.h5", "--out", tmp_path / "ro", "--no-control", "--bootstrap", "0",
          "--permutations", "0", "--device", "cpu", match=r"ro/report.json: Permission denied")


def test_a_resumed_run_logs_each_epoch_once(demo_data, demo_text, tmp_path):
    """Low group: killed after an epoch's log line but before its checkpoint, the run trains
    that epoch again; its line is not doubled, and half a line is dropped."""
    common = dict(shards=str(demo_data / "s-ptbxl"), text=str(demo_text), holdout=("LVOLT",),
                  epochs=2, batch_size=64, device="cpu", min_positives=3, max_steps=1)
    out = tmp_path / "run"
    fit.run(fit.FitConfig(out=str(out), **common))
    log = out / "log.jsonl"
    line = log.read_text().splitlines()[0]
    log.write_text(line + "\n" + line.replace('"epoch": 1', '"epoch": 2') + "\n{\"epo")
    fit.run(fit.FitConfig(out=str(out), resume=True, **{**common, "max_steps": None}))
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2]
