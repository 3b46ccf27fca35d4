"""Running a network over a large batch in pieces on the CPU.

oneDNN's convolutions on the CPU slow down once a layer's activations outgrow the caches: the posterior net alone,
forward + backward, took 1.19 s for 32 images at 128x128 (filters 32-64-128-192) in one call and 0.74 s in pieces of
4, and a whole 128x128 training step (batch 8) 2.57 s vs 2.21 s (2 cores, interleaved). At the demo's sizes a
whole step did not change measurably (0.204 vs 0.203 s at 64x64). The work is the same, only grouped into
cache-sized calls; on CUDA the batch goes in one call, which is what a GPU wants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

# Elements of one activation per piece on the CPU (2^21 float32 = 8 MB): small enough to stay near the caches and
# for glibc to reuse freed blocks from its heap (blocks over 32 MB are always fresh mmaps), large enough to keep
# each convolution or matmul efficient.
CPU_PIECE_ELEMENTS = 2**21

Out = TypeVar("Out", Tensor, tuple[Tensor, ...])


def piece_size(x: Tensor, channels: int) -> int:
    """Images per call for x [N, C_in, H, W] whose widest activation is `channels` x H x W per image: N on a
    non-CPU device, else the largest count whose activation stays within CPU_PIECE_ELEMENTS (at least 1)."""
    if x.device.type != "cpu":
        return x.shape[0]
    return max(1, CPU_PIECE_ELEMENTS // (channels * x.shape[-2] * x.shape[-1]))


def in_pieces(fn: Callable[..., Out], x: Tensor, size: int, *aligned: Tensor) -> Out:
    """fn(x, *aligned) over x [N, ...] in consecutive pieces of `size` along dim 0, outputs concatenated along dim 0.

    aligned: further inputs with the same first dim N, cut into the same pieces as x. fn returns a tensor or a
    tuple of tensors, each with the piece's batch as its first dim. With size >= N this is exactly
    fn(x, *aligned); otherwise the same values (every op in the nets is per image), grouped into smaller calls.
    """
    if size >= x.shape[0]:
        return fn(x, *aligned)
    outs = [fn(x[i : i + size], *(a[i : i + size] for a in aligned)) for i in range(0, x.shape[0], size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)
