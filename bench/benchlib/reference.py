"""Earlier implementations of code that was changed for speed, kept so the scripts can show before vs after.

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
    from supuq.metrics import _distances_from_gram, _exact_matmul

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


def kornia_augmenter(cfg):
    """`supuq.augment.Augmenter` before the direct implementation: kornia's AugmentationSequential with
    RandomElasticTransform (and RandomHorizontalFlip), masks as a "mask" key resampled nearest. Returns a callable
    (images [B,1,H,W], masks [B,D,H,W]) -> (images, masks)."""
    import kornia.augmentation as K
    from kornia.constants import DataKey, Resample

    steps = []
    if cfg.elastic:
        k, s, a = cfg.kernel_size, float(cfg.sigma), float(cfg.alpha)
        steps.append(K.RandomElasticTransform(kernel_size=(k, k), sigma=(s, s), alpha=(a, a), p=1.0,
                                              padding_mode="border"))
    if cfg.flip:
        steps.append(K.RandomHorizontalFlip(p=0.5))
    extra = {DataKey.MASK: {"resample": Resample.NEAREST, "align_corners": False}}
    pipeline = K.AugmentationSequential(*steps, data_keys=["input", "mask"], extra_args=extra)

    def run(images, masks):
        return tuple(pipeline(images, masks))

    return run
