"""The CUDA path: the same code with device='cuda' (bf16 autocast, device-resident data).
Skipped where no GPU is present, which includes CI."""
import json

import pytest
import torch

from ecgshard import data, fit, shards

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_fit_on_cuda_with_amp_both_data_paths_and_compiled(demo_data, demo_text, tmp_path):
    for path, compiled in (("preload", False), ("stream", False), ("preload", True)):
        out = tmp_path / f"{path}-{compiled}"
        fit.run(fit.FitConfig(shards=str(demo_data / "s-ptbxl"), text=str(demo_text),
                              out=str(out), holdout=("LVOLT",), epochs=2, batch_size=64,
                              device="cuda", amp=True, data=path, compile=compiled,
                              min_positives=3))
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert log[-1]["val_macro_auroc"] > 0.6
        ck = shards.load_checkpoint(out / "checkpoint-last.pt")
        assert ck["state"]["records_seen"] > 0


def test_preloaded_batches_live_on_the_device(demo_data):
    manifest = shards.load_manifest(demo_data / "s-ptbxl")
    sel = data.Selection(str(demo_data / "s-ptbxl"), (1, 2), tuple(shards.class_codes(manifest)))
    batch = next(iter(data.Preloaded(sel, 16, "cuda").epoch(0)))
    assert batch["signal"].device.type == "cuda" and batch["signal"].dtype == torch.float16
