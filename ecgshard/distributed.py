"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``, or not at all.

``torchrun --nproc_per_node N -m ecgshard fit ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``init`` joins the process group (NCCL on CUDA, gloo on CPU) and returns the
world. Without them the world is one process and every helper here is the identity, so
``fit`` has one code path.

Contrastive losses need every rank's embeddings: ``gather_with_grad`` concatenates them and
sends each rank the gradient of its own part (the all-gather of open_clip's ``gather_features``).
Batch-norm statistics are taken over the global batch (``sync_batch_norm``), so N processes
compute the loss and gradients that one process would on the same global batch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
_GROUP = None


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self):
        """Rank 0: the one process that writes checkpoints, logs and progress."""
        return self.rank == 0


def init(device):
    """Join the process group when launched by torchrun; returns ``(World, device)``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    global _GROUP
    # The loss's and batch norm's collectives run inside forward and backward, beside DDP's
    # gradient all-reduces: on a group of their own, so the two never interleave.
    _GROUP = dist.new_group()
    if rank != 0:
        # One voice: rank 0 logs; the others only warn.
        logging.getLogger("ecgshard").setLevel(logging.WARNING)
    return World(rank, size, local), device


def shutdown(world):
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (B, ...) tensor; backward returns this rank's slice of the
    gradient summed over ranks (all-reduce, which gloo and NCCL both have)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous(), group=_GROUP)
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=_GROUP)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


class _SumWithGrad(torch.autograd.Function):
    """Sum of a tensor over ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, group=_GROUP)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=_GROUP)
        return grad


def gather_with_grad(x, world):
    """Every rank's equal-sized batch, concatenated in rank order (autograd-aware)."""
    return x if world.size == 1 else _GatherWithGrad.apply(x)


def gather(x, world):
    """Every rank's equal-sized tensor, concatenated in rank order (no gradient)."""
    if world.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world.size)]
    dist.all_gather(parts, x.contiguous(), group=_GROUP)
    return torch.cat(parts)


def gather_objects(obj, world):
    """A list of every rank's picklable object, in rank order."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def total(value, world):
    """A number summed over ranks."""
    if world.size == 1:
        return value
    t = torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(t)
    return type(value)(t.item())


def barrier(world):
    if world.size > 1:
        dist.barrier()


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the global batch (every rank's records),
    on any device: the moments are summed over ranks with autograd, so gradients flow through
    the global mean and variance exactly as in one process. torch's own SyncBatchNorm runs on
    GPUs only, and gloo tests need the same arithmetic on CPU."""

    def forward(self, x):                       # (B, C, T)
        if not self.training:
            return super().forward(x)
        n = torch.tensor(float(x.shape[0] * x.shape[2]), device=x.device)
        moments = torch.stack([x.sum(dim=(0, 2)), (x * x).sum(dim=(0, 2))])    # (2, C)
        moments = _SumWithGrad.apply(moments)
        n = _SumWithGrad.apply(n)
        mean = moments[0] / n
        var = (moments[1] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else \
                1.0 / float(self.num_batches_tracked)          # cumulative average, as torch
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp(min=1))
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


def sync_batch_norm(module, world):
    """Replace every BatchNorm1d of ``module`` by a SyncBatchNorm1d (weights and running
    statistics kept) when there are several ranks; the module itself otherwise."""
    if world.size == 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            sync = SyncBatchNorm1d(child.num_features, child.eps, child.momentum,
                                   child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync.to(child.weight.device))
        else:
            sync_batch_norm(child, world)
    return module
