"""Loss terms of the objective (docs/architecture.md, Objective) as pure functions, plus the `LossTerms` record.

Nothing here holds parameters or draws random numbers: the models sample (latents, weight noise, logit
noise) and pass the results in, so every function can be checked against a hand-computed value.
Inputs are upcast to float32: under bf16 autocast, 1 - 1e-6 rounds to 1 and a pixel sum over 128x128
loses digits, so the losses are computed in full precision whatever the network ran in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossTerms:
    """One training step's objective and its parts, each a 0-dim tensor.

    `total = recon + beta * kl_z + kl_w + supervised + l2`. Which fields carry their weight:

    - `recon`: as is (weight 1).
    - `kl_z`: UNWEIGHTED KL(q(z|x,y) || p(z|x)) in nats, so it reads the same whatever `beta` is.
    - `kl_w`: already divided by N_train (its weight in the objective).
    - `supervised`: already multiplied by `gamma`.
    - `l2`: already multiplied by the L2 coefficient.

    Only `total` needs a graph; the others may be used for logging after `.detach()`.
    """

    total: Tensor
    recon: Tensor
    kl_z: Tensor
    kl_w: Tensor
    supervised: Tensor
    l2: Tensor

    @classmethod
    def without_weight_terms(cls, recon: Tensor, l2: Tensor, kl_z: Tensor | None = None,
                             beta: float = 1.0) -> "LossTerms":
        """The terms of a method with no weight KL and no supervised term (Kendall & Gal, SSN, PHiSeg, the
        soft-label U-Net): total = recon + beta * kl_z + l2, the absent terms 0-dim zeros."""
        zero = recon.new_zeros(())
        kl_z = zero if kl_z is None else kl_z
        return cls(total=recon + beta * kl_z + l2, recon=recon, kl_z=kl_z, kl_w=zero, supervised=zero, l2=l2)

    def as_dict(self) -> dict[str, float]:
        """Python floats for logging (one host sync per field)."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def reconstruction(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE-with-logits summed over everything but dim 0, averaged over dim 0.

    logits, targets: [N, *S] (targets float in [0, 1]). Returns a 0-dim tensor.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return bce.flatten(1).sum(1).mean()


def kl_gaussians(mu_q: Tensor, log_sigma_q: Tensor, mu_p: Tensor, log_sigma_p: Tensor) -> Tensor:
    """Analytic KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) of axis-aligned Gaussians.

    All inputs [N, L]. Returns [N]: the per-dimension KL summed over the L latent dimensions.
    """
    mu_q, log_sigma_q, mu_p, log_sigma_p = (t.float() for t in (mu_q, log_sigma_q, mu_p, log_sigma_p))
    var_ratio = torch.exp(2.0 * (log_sigma_q - log_sigma_p))
    mean_term = ((mu_q - mu_p) * torch.exp(-log_sigma_p)) ** 2
    kl = (log_sigma_p - log_sigma_q) + 0.5 * (var_ratio + mean_term - 1.0)
    return kl.sum(-1)


def kl_spatial_gaussians(mu_q: Tensor, log_sigma_q: Tensor, mu_p: Tensor, log_sigma_p: Tensor) -> Tensor:
    """`kl_gaussians` of diagonal Gaussians over whole maps (PHiSeg's spatial latents): every element an
    independent dimension. All inputs [N, *S] (e.g. [N, Z, H_l, W_l]). Returns [N]: the KL summed over S."""
    return kl_gaussians(mu_q.flatten(1), log_sigma_q.flatten(1), mu_p.flatten(1), log_sigma_p.flatten(1))


def supervised_aleatoric(p_m: Tensor, p_g: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over all elements of BCE(p_g, p_m) = -[p_g log p_m + (1 - p_g) log(1 - p_m)].

    p_m: predicted foreground probability, p_g: grader mean, same shape [N, *S]. p_m is clamped to
    [eps, 1 - eps] because a few saturated sigmoids would otherwise make the log infinite. Returns 0-dim.
    """
    p_m = p_m.float().clamp(eps, 1.0 - eps)
    p_g = p_g.to(p_m.dtype)
    return -(p_g * torch.log(p_m) + (1.0 - p_g) * torch.log1p(-p_m)).mean()


def kendall_gal_nll(mu: Tensor, log_sigma: Tensor, targets: Tensor, eps: Tensor) -> Tensor:
    """Kendall & Gal (2017) aleatoric loss for a sigmoid output, logsumexp form.

    Per pixel: -log (1/T) sum_t p(y | logit_t), logit_t = mu + sigma * eps_t, with
    log p(y | l) = y log sigmoid(l) + (1 - y) log sigmoid(-l).

    mu, log_sigma: [N, 1, *S]; targets: [N, D, *S] binary {0, 1} (every grader a target);
    eps: [T, N, 1, *S] standard normal draws. Returns the NLL summed over pixels, averaged over the
    N * D (image, grader) pairs (0-dim).

    Targets are binary, so each pixel only ever needs the two T-sample log-means (for y=1 and y=0);
    they are computed once per image and selected per grader instead of materialising [T, N, D, *S].
    """
    mu, log_sigma, eps = mu.float(), log_sigma.float(), eps.float()
    logits = mu.unsqueeze(0) + torch.exp(log_sigma).unsqueeze(0) * eps  # [T, N, 1, *S]
    log_t = math.log(eps.shape[0])
    log_mean_fg = torch.logsumexp(F.logsigmoid(logits), dim=0) - log_t  # [N, 1, *S]
    log_mean_bg = torch.logsumexp(F.logsigmoid(-logits), dim=0) - log_t
    y = targets.to(mu.dtype)
    nll = -(y * log_mean_fg + (1.0 - y) * log_mean_bg)  # [N, D, *S]
    return nll.flatten(2).sum(-1).mean()


def ssn_nll(logit_samples: Tensor, targets: Tensor) -> Tensor:
    """Stochastic Segmentation Networks' loss: -log of the Monte-Carlo mean over M logit samples of the
    likelihood of a whole mask, with a sigmoid likelihood per pixel.

    Per (image, grader): -[logsumexp_m sum_pixels log p(y | l_m) - log M], log p(y | l) = -BCE(l, y).
    logit_samples: [M, N, *S] (M samples of each image's logit map); targets: [N, D, *S] binary {0, 1} (every
    grader a target). Returns the mean over the N * D (image, grader) pairs (0-dim). With M = 1 it is the
    pixel-summed BCE of that one sample, the same number as `reconstruction`.
    """
    logits = logit_samples.float().unsqueeze(2)  # [M, N, 1, *S]
    y = targets.to(logits.dtype).unsqueeze(0)  # [1, N, D, *S]
    log_lik = -F.binary_cross_entropy_with_logits(logits.expand(-1, -1, y.shape[2], *([-1] * (y.ndim - 3))),
                                                  y.expand(logits.shape[0], *y.shape[1:]), reduction="none")
    per_sample = log_lik.flatten(3).sum(-1)  # [M, N, D]
    return -(torch.logsumexp(per_sample, dim=0) - math.log(logit_samples.shape[0])).mean()


def l2_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of squares of all given tensors (0-dim). The caller chooses which (conv weights, not biases)."""
    squares = [p.pow(2).sum() for p in params]
    if not squares:
        return torch.zeros(())
    return torch.stack(squares).sum()
