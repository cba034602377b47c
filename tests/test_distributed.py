"""Data-parallel fit: several CPU processes on the gloo backend, launched by torchrun."""
import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ecgshard import data, fit, shards
from ecgshard.distributed import World


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_command(demo_data, demo_text, out, *extra):
    return ["fit", "--shards", str(demo_data / "s-ptbxl"), "--text", str(demo_text),
            "--out", str(out), "--batch-size", "32", "--min-positives", "3", "--device", "cpu",
            "--no-augment", "--data", "preload", "--epochs", "1", *extra]


def _torchrun(n, args):
    # Loopback only: CI machines need no resolvable hostname or network for two local ranks.
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ecgshard", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _first_loss(run):
    return json.loads((run / "log.jsonl").read_text().splitlines()[0])["loss"]


def test_two_processes_take_the_step_one_process_takes_on_the_same_global_batch(
        demo_data, demo_text, tmp_path):
    """Global batch 32 = 2 ranks x 16: the loss (over the gathered embeddings, batch norm over
    the global batch) and the weights after the step equal one process's with batch 32."""
    from ecgshard.cli import main

    one, two = tmp_path / "one", tmp_path / "two"
    with pytest.raises(SystemExit) as exit_:
        main(_fit_command(demo_data, demo_text, one, "--max-steps", "1"))
    assert exit_.value.code == 0
    _torchrun(2, _fit_command(demo_data, demo_text, two, "--max-steps", "1"))
    assert _first_loss(two) == pytest.approx(_first_loss(one), abs=1e-5)
    a = shards.load_checkpoint(one / "checkpoint-last.pt")["model"]
    b = shards.load_checkpoint(two / "checkpoint-last.pt")["model"]
    assert a.keys() == b.keys()
    # Adam's first step is close to lr * sign(gradient): an element whose gradient is within
    # rounding of zero may step the other way, so a few in a million may differ by 2 lr.
    weights = [k for k in a if a[k].dtype.is_floating_point]
    differ = sum(int(((a[k] - b[k]).abs() > 2e-5).sum()) for k in weights)
    assert differ <= 1e-5 * sum(a[k].numel() for k in weights)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 1


def test_a_run_resumes_with_another_number_of_processes(demo_data, demo_text, tmp_path):
    run = tmp_path / "run"
    _torchrun(2, _fit_command(demo_data, demo_text, run))
    steps = json.loads((run / "summary.json").read_text())["steps"]
    fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                          out=str(run), batch_size=32, min_positives=3, device="cpu",
                          augment=False, data="preload", epochs=2, resume=True))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and [r["processes"] for r in log] == [2, 1]
    assert log[1]["step"] == 2 * steps                    # the same global steps per epoch
    assert json.loads((run / "heldout_check.json").read_text())["passed"]


def _digest(sig):
    return hashlib.sha256(np.ascontiguousarray(sig).tobytes()).hexdigest()


@pytest.mark.parametrize("path", ["preload", "stream"])
def test_ranks_read_disjoint_records(demo_data, path):
    sel = data.Selection(str(demo_data / "s-ptbxl"), tuple(range(1, 9)), ("NORM",))
    n, _, _ = data.count_selection(sel)
    steps = n // 32
    seen = []
    for rank in (0, 1):
        world = World(rank=rank, size=2)
        loader = data.Preloaded(sel, 16, "cpu", world=world) if path == "preload" else \
            data.StreamLoader(sel, 16, "cpu", workers=0, world=world)
        batches = list(loader.epoch(0, steps))
        assert len(batches) == steps                      # every rank: the same step count
        seen.append([_digest(s) for b in batches for s in b["signal"].numpy()])
    if path == "preload":
        assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])
        assert not set(seen[0]) & set(seen[1])
        one = data.Preloaded(sel, 32, "cpu")              # the same global batches, split
        first = next(iter(one.epoch(0)))
        assert [_digest(s) for s in first["signal"].numpy()] == seen[0][:16] + seen[1][:16]
    else:
        # A rank's blocks hold disjoint records from the other's; the forced step count reads
        # only its own blocks (again, reshuffled, when they run out first).
        blocks = [{_digest(s) for b in data.ShardStream(sel, 16, drop_last=False, rank=r, world=2)
                   for s in b["signal"].numpy()} for r in (0, 1)]
        assert blocks[0] and blocks[1] and not blocks[0] & blocks[1]
        assert len(blocks[0]) + len(blocks[1]) == n
        assert set(seen[0]) <= blocks[0] and set(seen[1]) <= blocks[1]
