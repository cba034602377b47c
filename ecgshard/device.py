"""Where tensors run: one device rule and one autocast rule for every stage."""
from __future__ import annotations

import contextlib


def resolve_device(device="auto"):
    """``auto``: CUDA when present, else CPU; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def autocast(device, enabled=True):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU autocast would slow convs)."""
    import torch

    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
