"""Earlier implementations of code that was changed (for speed, or to call a library's own version), kept so the
scripts can show before vs after.

Each function has the same contract as the supuq function it replaced and is checked against it in the bench.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fcomb_forward_conv2d(fcomb, features: Tensor, z: Tensor) -> Tensor:
    """`supuq.models.prob_unet.Fcomb.forward` before the channel-first change: the same split of the first 1x1
    conv (feature part once per map, latent part per sample), but every layer a 1x1 `F.conv2d` on NCHW maps."""
    n, k = z.shape[:2]
    first = fcomb.convs[0]
    w_feat = first.weight[:, : fcomb.feature_channels]
    w_lat = first.weight[:, fcomb.feature_channels :, 0, 0]
    if features.dim() == 4:
        a = F.conv2d(features, w_feat, first.bias).unsqueeze(1)
    else:
        a = F.conv2d(features.flatten(0, 1), w_feat, first.bias).unflatten(0, (n, k))
    h = (a + (z @ w_lat.T)[..., None, None]).flatten(0, 1)
    for conv in fcomb.convs[1:]:
        h = conv(F.relu(h))
    return h.reshape(n, k, *h.shape[-2:])


def ged_dense(samples: Tensor, annotations: Tensor, chunk: int = 32) -> Tensor:
    """`supuq.metrics.ged` before the union compaction: one float32 Gram matrix per chunk of images over all H*W
    pixels (samples [N,S,H,W] bool, annotations [N,D,H,W] bool -> float64 [N])."""
    from supuq.metrics.distances import _distances_from_gram, _exact_matmul

    n, s = samples.shape[:2]
    pixels = samples.shape[2] * samples.shape[3]
    out = []
    for start in range(0, n, chunk):
        s_part, y_part = samples[start : start + chunk], annotations[start : start + chunk]
        x = torch.empty(s_part.shape[0], s + y_part.shape[1], pixels, dtype=torch.float32)
        x[:, :s].copy_(s_part.flatten(2))
        x[:, s:].copy_(y_part.flatten(2))
        gram = _exact_matmul(x, x)
        sizes = torch.diagonal(gram, dim1=1, dim2=2)
        dist = _distances_from_gram(gram, sizes, sizes)
        cross, div_s, div_y = (dist[:, :s, s:].mean((1, 2)), dist[:, :s, :s].mean((1, 2)), dist[:, s:, s:].mean((1, 2)))
        out.append(2 * cross - div_s - div_y)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def direct_elastic_augmenter(cfg):
    """`supuq.augment.Augmenter` before it called kornia: kornia 0.9's RandomElasticTransform math written out
    (the same uniform noise draw `torch.rand(B,2,H,W) * 2 - 1`, the Gaussian smoothing as two matrix products with
    banded matrices, the field computed once for the image and its masks), elastic only. Returns a callable
    (images [B,1,H,W], masks [B,D,H,W]) -> (images, masks) equal to kornia's to float rounding."""
    k, sigma, alpha = cfg.kernel_size, float(cfg.sigma), float(cfg.alpha)
    x = torch.arange(k, dtype=torch.float64) - k // 2
    taps = torch.exp(-(x**2) / (2.0 * sigma**2))
    taps = taps / taps.sum()  # kornia's get_gaussian_kernel1d
    cache: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    def smoothing_matrix(size: int) -> Tensor:
        """[size, size] G with (G v)[i] = sum_t taps[t] v[i + t - r]: a zero-padded 'same' correlation."""
        offset = torch.arange(size)[None, :] - torch.arange(size)[:, None] + k // 2
        inside = (offset >= 0) & (offset < k)
        return torch.where(inside, taps[offset.clamp(0, k - 1)], torch.zeros((), dtype=taps.dtype))

    def run(images, masks):
        b, _, h, w = images.shape
        key = (h, w, images.device, images.dtype)
        if key not in cache:
            identity = torch.eye(2, 3, dtype=torch.float32, device=images.device).unsqueeze(0)
            cache[key] = (smoothing_matrix(h).to(images.device, images.dtype),
                          smoothing_matrix(w).T.contiguous().to(images.device, images.dtype),
                          F.affine_grid(identity, [1, 1, h, w], align_corners=False).to(images.dtype))
        g_h, g_wt, grid = cache[key]
        noise = torch.rand(b, 2, h, w, device=images.device, dtype=images.dtype) * 2 - 1
        grid = grid + (torch.matmul(torch.matmul(g_h, noise), g_wt) * alpha).permute(0, 2, 3, 1)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="border", align_corners=False)
        return images, masks

    return run
