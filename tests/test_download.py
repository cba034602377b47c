"""ecgshard download against a local HTTP server on the loopback address (started here)."""
import hashlib
import http.server
import threading

import pytest

from ecgshard import download
from ecgshard.errors import ECGShardError

FILES = {"ptbxl_database.csv": b"ecg_id,patient_id\n1,2\n" * 50,
         "scp_statements.csv": b",description\nNORM,normal ECG\n",
         "records100/00000/00001_lr.dat": bytes(range(256)) * 400,
         "records100/00000/00001_lr.hea": b"00001_lr 12 100 1000\n",
         "records500/00000/00001_hr.dat": bytes(range(256)) * 2000}


class Server:
    """Serves FILES and SHA256SUMS.txt with Range support and injectable faults."""

    def __init__(self):
        self.files = dict(FILES)
        self.sums = "".join(f"{hashlib.sha256(v).hexdigest()} {k}\n" for k, v in FILES.items())
        self.cut_once = set()        # send half the body, then drop the connection
        self.fail_times = {}         # name -> number of HTTP 500 answers before success
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                owner.requests.append((name, self.headers.get("Range")))
                body = owner.sums.encode() if name == "SHA256SUMS.txt" else owner.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                if owner.fail_times.get(name, 0) > 0:
                    owner.fail_times[name] -= 1
                    self.send_error(500)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if name in owner.cut_once:
                    owner.cut_once.discard(name)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _cfg(server, dest, **kw):
    return download.DownloadConfig(database="ptbxl", dest=str(dest), base_url=server.url,
                                   workers=2, backoff=0.01, timeout=5, **kw)


def test_full_download_only_what_the_build_needs(server, tmp_path):
    s = download.run(_cfg(server, tmp_path))
    assert s["verified"] == 4 and not s["failed"]
    for name in ("ptbxl_database.csv", "records100/00000/00001_lr.dat"):
        assert (tmp_path / name).read_bytes() == FILES[name]
    assert not (tmp_path / "records500").exists()              # --rate 100
    assert not list(tmp_path.rglob("*.part"))
    again = download.run(_cfg(server, tmp_path))
    assert again["already_present"] == 4


def test_resume_after_a_killed_transfer(server, tmp_path):
    name = "records100/00000/00001_lr.dat"
    server.cut_once.add(name)
    download.run(_cfg(server, tmp_path))
    assert (tmp_path / name).read_bytes() == FILES[name]
    ranges = [r for n, r in server.requests if n == name]
    assert ranges[0] is None and ranges[1] == f"bytes={len(FILES[name]) // 2}-"


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    name = "records100/00000/00001_lr.dat"
    part = tmp_path / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(FILES[name][:1000])
    download.run(_cfg(server, tmp_path))
    assert (tmp_path / name).read_bytes() == FILES[name]
    assert ("records100/00000/00001_lr.dat", "bytes=1000-") in server.requests


def test_checksum_mismatch_is_an_error_and_nothing_is_kept(server, tmp_path):
    name = "scp_statements.csv"
    server.files[name] = b"tampered"
    with pytest.raises(ECGShardError, match="scp_statements.csv: checksum"):
        download.run(_cfg(server, tmp_path))
    assert not (tmp_path / name).exists()
    assert not (tmp_path / (name + ".part")).exists()
    assert (tmp_path / "ptbxl_database.csv").exists()           # the others completed


def test_server_errors_are_retried(server, tmp_path):
    server.fail_times["ptbxl_database.csv"] = 2
    s = download.run(_cfg(server, tmp_path))
    assert not s["failed"]
    assert [n for n, _ in server.requests].count("ptbxl_database.csv") == 3


def test_missing_file_is_reported(server, tmp_path):
    del server.files["records100/00000/00001_lr.hea"]
    with pytest.raises(ECGShardError, match="HTTP 404"):
        download.run(_cfg(server, tmp_path))


def test_challenge_source_filter():
    cfg = download.DownloadConfig(database="cinc2021", dest="x", sources=("georgia",))
    assert download.wanted(cfg, "training/georgia/g1/E00001.hea")
    assert not download.wanted(cfg, "training/ningbo/g1/JS10647.hea")
    assert download.wanted(cfg, "LICENSE.txt")
    assert download.base_url(cfg) == "https://physionet.org/files/challenge-2021/1.0.3/"
