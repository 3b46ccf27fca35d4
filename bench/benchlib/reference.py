"""Earlier implementations of code that was changed for speed, kept so the scripts can show before vs after.

Each function has the same contract as the supuq function it replaced and is checked against it in the bench.
"""

from __future__ import annotations

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
