"""supuq.models.pieces: on the CPU, large batches run in pieces give the values and gradients of one call."""

from __future__ import annotations

import torch

from supuq.config import LossConfig
from supuq.models import ProbUNet

from .conftest import FILTERS, H, small_cfg


def test_cpu_pieces_give_the_same_nets_as_one_call(monkeypatch):
    """On the CPU the U-Net, the latent nets and the fcomb decoding of samples run large batches in pieces
    (models/pieces.py); the values must be those of one call, including explicit weight samples, which must be
    shared by every piece."""
    from supuq.models import pieces

    torch.manual_seed(0)
    model = ProbUNet(small_cfg()).eval()
    x = torch.rand(5, 1, H, H)
    pairs = torch.rand(7, 2, H, H)
    with torch.no_grad():
        torch.manual_seed(1)
        whole = (model.unet(x), model.unet(x, draws=3, shared_weights=True), model.posterior(pairs))
        torch.manual_seed(2)
        whole_samples = model.sample(x, weight_samples=2, latent_samples=4)
        monkeypatch.setattr(pieces, "CPU_PIECE_ELEMENTS", 2 * FILTERS[0] * H * H)  # 2 images per piece
        assert pieces.piece_size(x, FILTERS[0]) == 2
        torch.manual_seed(1)
        split = (model.unet(x), model.unet(x, draws=3, shared_weights=True), model.posterior(pairs))
        torch.manual_seed(2)
        split_samples = model.sample(x, weight_samples=2, latent_samples=4)  # fcomb decodes one map per piece
    torch.testing.assert_close(split_samples, whole_samples)
    assert split_samples.shape == (5, 2, 4, H, H)
    torch.testing.assert_close(split[0], whole[0])
    torch.testing.assert_close(split[1], whole[1])  # same 3 weight samples in every piece
    for a, b in zip(split[2], whole[2]):
        torch.testing.assert_close(a, b)
    assert split[1].shape == (5, 3, FILTERS[0], H, H)


def test_cpu_pieces_keep_gradients(monkeypatch, batch):
    """A training step in pieces reaches the same gradients as one call (local-reparameterisation noise off)."""
    from supuq.models import pieces

    x, masks = batch
    cfg = small_cfg(weight_noise={"init_log_sigma": -30.0})  # noise ~1e-13: draws do not matter
    grads = []
    for elements in (2**62, FILTERS[0] * H * H):  # one call, then one image per piece
        monkeypatch.setattr(pieces, "CPU_PIECE_ELEMENTS", elements)
        torch.manual_seed(0)
        model = ProbUNet(cfg, LossConfig(gamma=0.0))
        torch.manual_seed(1)
        model.loss(x, masks, n_train=10).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
