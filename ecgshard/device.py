"""Where tensors run: one device rule and one autocast rule for every stage."""
from __future__ import annotations

import contextlib

from .errors import ECGShardError


def resolve_device(device="auto"):
    """``auto``: CUDA when present, else CPU; anything else as given, if this machine has it."""
    import torch


    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise ECGShardError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:N, "
                            f"mps)") from None
    if kind.type == "cuda" and (not torch.cuda.is_available() or
                                (kind.index or 0) >= torch.cuda.device_count()):
        raise ECGShardError(f"--device {device}: this machine has "
                            f"{torch.cuda.device_count()} CUDA devices visible (torch "
                            f"{torch.__version__}, CUDA build {torch.version.cuda}); use "
                            f"--device cpu or auto")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise ECGShardError("--device mps: MPS is not available here; use --device cpu or auto")
    return device


def autocast(device, enabled=True):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU autocast would slow convs)."""
    import torch

    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
