"""FFN and GFFN losses (NOTES.md A; Klinger 2021, eq. 4.15/4.16).

A classifier f(x) with K logits is read as an unnormalized joint model
p(x, y) = exp(f_y(x)) / Z with ln Z(x) = logsumexp_k f_k(x) (one-hot labels) or
sum_k softplus(f_k(x)) (binary labels). Over a batch of L examples:

    FFN  (cross-entropy): -(mean_l f_{y_l}(x_l) - mean_l      ln Z(x_l))
    GFFN:                 -(mean_l f_{y_l}(x_l) - logsumexp_l ln Z(x_l))

The GFFN normalizer runs over the *global* batch. Under data parallelism `gffn_loss`
all-gathers ln Z differentiably; each worker keeps its local mean of f_y, and after DDP
averages the gradients over N workers the result equals one worker on the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

LOG_PARTITIONS = ("logsumexp", "softplus")


def log_partition(logits: torch.Tensor, kind: str = "logsumexp") -> torch.Tensor:
    """ln Z(x) per example: logsumexp_k f_k (default) or sum_k softplus(f_k)."""
    if kind == "logsumexp":
        return torch.logsumexp(logits, dim=-1)
    if kind == "softplus":
        return F.softplus(logits).sum(dim=-1)
    raise ValueError(f"unknown log_partition '{kind}'; known: {', '.join(LOG_PARTITIONS)}")


def _label_logit(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets[:, None]).squeeze(1)


def ffn_loss(logits: torch.Tensor, targets: torch.Tensor,
             log_partition_kind: str = "logsumexp") -> torch.Tensor:
    """Standard loss -(mean f_y - mean ln Z); cross-entropy for `logsumexp`."""
    lnz = log_partition(logits, log_partition_kind)
    return -(_label_logit(logits, targets).mean() - lnz.mean())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized per-worker tensors; backward sums the gradients over workers
    and returns this worker's slice (what DDP's gradient averaging then divides by N)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, values.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), values.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_batch(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-example tensor over all workers, keeping the autograd graph.

    Per-worker batches must be equal in size; `datasets.iterate_minibatches` guarantees it.
    """
    return _AllGather.apply(values) if _distributed() else values


def gffn_loss(logits: torch.Tensor, targets: torch.Tensor,
              log_partition_kind: str = "logsumexp") -> torch.Tensor:
    """GFFN loss -(mean_l f_y(x_l) - logsumexp_l ln Z(x_l)) with the global-batch normalizer.

    Its parameter gradient weights each example's ln Z gradient by the in-batch softmax of
    ln Z (NOTES.md A). With several workers, ln Z is all-gathered (see `gather_batch`).
    """
    lnz = gather_batch(log_partition(logits, log_partition_kind))
    return -(_label_logit(logits, targets).mean() - torch.logsumexp(lnz, dim=0))


LOSSES = {"ffn": ffn_loss, "gffn": gffn_loss}


def classifier_loss(name: str):
    """The loss function of a model type: 'ffn' or 'gffn'."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; known: {', '.join(LOSSES)}")
    return LOSSES[name]
